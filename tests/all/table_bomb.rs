//! A guest that grows a wasm table without bound (Rust cannot emit
//! `table.grow`, so this handler is written in the component text format).
//! It is stopped at the table-element cap with a typed error, and the same app
//! and a bystander are served afterwards.

use weir_host::{AppSpec, InvokeError, Limits, Outcome};

use crate::common::{assert_bystander_serves, directive, runtime};

/// `handle` returns an empty result for an empty batch; for any other batch
/// it grows its table by 10,000 null references until growth fails, then
/// traps with `unreachable`.
const TABLE_BOMB: &str = r#"
(component
  (core module $m
    (memory (export "memory") 1)
    (table $t 1 funcref)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      ;; bump allocator, aligned to 8
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.const 7)) (i32.const -8)))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (func (export "handle") (param $ptr i32) (param $len i32) (result i32)
      (if (i32.eqz (local.get $len)) (then (return (i32.const 16))))
      (loop $grow
        (br_if $grow
          (i32.ne (table.grow $t (ref.null func) (i32.const 10000)) (i32.const -1))))
      unreachable))
  (core instance $i (instantiate $m))
  (type $event' (record
    (field "id" string) (field "name" string) (field "source" string)
    (field "origin-node" (option u32)) (field "domains" (list string))
    (field "payload" (list u8)) (field "attempt" u32) (field "sequence" u64)
    (field "published-ms" u64)))
  (export $event "event" (type $event'))
  (type $outcome' (variant (case "done") (case "retry" u32) (case "reject" string)))
  (export $outcome "outcome" (type $outcome'))
  (type $message' (record (field "name" string) (field "payload" (list u8))))
  (export $message "message" (type $message'))
  (type $effect' (variant (case "restart" string) (case "reload" string) (case "publish" $message)))
  (export $effect "effect" (type $effect'))
  (type $result' (record (field "outcomes" (list $outcome)) (field "effects" (list $effect))))
  (export $result "batch-result" (type $result'))
  (func $handle (param "batch" (list $event)) (result $result)
    (canon lift (core func $i "handle") (memory (core memory $i "memory"))
      (realloc (core func $i "cabi_realloc"))))
  (export "handle" (func $handle))
)
"#;

#[test]
fn table_growth_bomb_is_stopped_at_the_cap() {
    let bytes = wat::parse_str(TABLE_BOMB).expect("valid component text");
    let mut spec = AppSpec::new("table-bomb", 1, "node1");
    spec.limits = Limits {
        table_elements: 50_000,
        ..Limits::default()
    };
    let app = runtime().deploy(spec, &bytes).expect("deploys");
    // An empty batch is served.
    assert_eq!(app.invoke_blocking(&[]).result.unwrap().outcomes, vec![]);
    let inv = app.invoke_blocking(&directive("bomb"));
    let err = inv.result.expect_err("the bomb must be stopped");
    assert!(
        matches!(&err, InvokeError::ResourceLimit(m) if m.contains("table grew to") && m.contains("50000")),
        "{err:?}"
    );
    // The same app (fresh instance) and a bystander are served.
    assert_eq!(
        app.invoke_blocking(&[]).result.unwrap().outcomes,
        Vec::<Outcome>::new()
    );
    assert_bystander_serves();
}
