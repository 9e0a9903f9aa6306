//! Handlers' cluster state (issue #12): the `weir:handler/kv` import against
//! a real nats-server. Compare-and-set races between two hosts (two NATS
//! connections) and two apps sharing a bucket lose no update; keys list by
//! prefix; caps give typed errors and leave a bystander unharmed; a host
//! started from a config gives a granted app its bucket. (Grants refused at
//! deploy and the 0.1.0 component: `components::kv_probe`,
//! `components::v0_1`.)

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_host::nats::Transport;
use weir_host::nats::TransportExt as _;
use weir_host::runtime::kv::KvGrant;
use weir_host::{App, AppSpec, Outcome};
use weir_test_support::config::{AppBuilder, ConfigBuilder};
use weir_test_support::nats::{publisher, server};

use crate::common::{directive, event, heavy, runtime};
use crate::nats::rt;

/// Batches each of the four writers runs in the race: 25.
const ROUNDS: usize = 25;

/// Deploy kv-probe as `name` with `grant`, its buckets on `transport`.
async fn kv_app(name: &str, grant: KvGrant, transport: &Transport) -> App {
    let mut spec = AppSpec::new(name, 1, "node1");
    spec.kv = grant.clone();
    let app = runtime()
        .deploy_file(spec, weir_test_artifacts::KV_PROBE.as_ref())
        .unwrap();
    let buckets = transport.app_buckets(name, &grant).await.unwrap();
    app.attach_kv(Arc::new(buckets));
    app
}

/// The value of `key` in bucket `bucket` on `url`, as text.
pub async fn value(url: &str, bucket: &str, key: &str) -> Option<String> {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let store = js.get_key_value(bucket).await.unwrap();
    store
        .get(key)
        .await
        .unwrap()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Run `payloads` as one batch `ROUNDS` times on `app`; how many times each
/// event was done.
fn rounds(app: App, payloads: &'static [&'static str]) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut done = vec![0u64; payloads.len()];
        for _ in 0..ROUNDS {
            let batch: Vec<_> = payloads
                .iter()
                .map(|p| event("test", "cluster", p))
                .collect();
            let handled = app.invoke_blocking(&batch).result.unwrap();
            for (i, outcome) in handled.outcomes.iter().enumerate() {
                match outcome {
                    Outcome::Done => done[i] += 1,
                    other => eprintln!("{}: {other:?}", payloads[i]),
                }
            }
        }
        done
    })
}

#[test]
fn compare_and_set_races_between_hosts_and_apps_lose_no_update() {
    let _heavy = heavy();
    let (nats, _store) = server();
    let url = nats.url();
    let rt = rt();
    let both = KvGrant {
        own: true,
        shared: vec!["team".into()],
    };
    let shared_only = KvGrant {
        own: false,
        shared: vec!["team".into()],
    };
    // Two hosts (each its own NATS connection) run app `counter`; both also
    // run app `other`, which shares bucket `team` with it.
    let (host1, host2) = rt.block_on(async {
        (
            publisher(&url).await.unwrap(),
            publisher(&url).await.unwrap(),
        )
    });
    let apps = rt.block_on(async {
        [
            kv_app("counter", both.clone(), &host1).await,
            kv_app("counter", both.clone(), &host2).await,
            kv_app("other", shared_only.clone(), &host1).await,
            kv_app("other", shared_only.clone(), &host2).await,
        ]
    });
    const COUNTER: &[&str] = &["cas-incr:n", "incr:m", "shared-incr:team:t"];
    const OTHER: &[&str] = &["shared-incr:team:t"];
    let [c1, c2, o1, o2] = apps;
    let writers = [
        rounds(c1, COUNTER),
        rounds(c2, COUNTER),
        rounds(o1, OTHER),
        rounds(o2, OTHER),
    ];
    let done: Vec<Vec<u64>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let cas = done[0][0] + done[1][0];
    let incr = done[0][1] + done[1][1];
    let shared = done[0][2] + done[1][2] + done[2][0] + done[3][0];
    eprintln!(
        "done: cas {cas}, incr {incr}, shared {shared} of {} each",
        2 * ROUNDS
    );
    // Every write that said done is in the store: no lost update.
    rt.block_on(async {
        assert_eq!(
            value(&url, "WEIR_KV_counter", "n").await,
            Some(cas.to_string())
        );
        assert_eq!(
            value(&url, "WEIR_KV_counter", "m").await,
            Some(incr.to_string())
        );
        assert_eq!(
            value(&url, "WEIR_KVS_team", "t").await,
            Some(shared.to_string())
        );
    });
    // `increment` retries until it lands; the SDK's `update` gives up after
    // 16 conflicts in a row, which two writers do not reach.
    assert_eq!(incr, 2 * ROUNDS as u64);
    assert_eq!(cas, 2 * ROUNDS as u64);
    assert!(shared >= 3 * ROUNDS as u64, "{shared}");
}

#[test]
fn keys_by_prefix_caps_and_a_bystander() {
    let _heavy = heavy();
    let (nats, _store) = server();
    let url = nats.url();
    let rt = rt();
    let transport = rt.block_on(publisher(&url)).unwrap();
    let grant = KvGrant {
        own: true,
        shared: Vec::new(),
    };
    let app = rt.block_on(kv_app("probe", grant.clone(), &transport));
    let bystander = rt.block_on(kv_app("bystander", grant, &transport));
    let batch: Vec<_> = [
        "put:users.a=1",
        "put:users.b.c=2",
        "put:other=3",
        "keys:users",
    ]
    .iter()
    .map(|p| event("test", "cluster", p))
    .collect();
    let handled = app.invoke_blocking(&batch).result.unwrap();
    assert!(
        handled.outcomes.iter().all(|o| *o == Outcome::Done),
        "{handled:?}"
    );
    assert_eq!(
        rt.block_on(value(&url, "WEIR_KV_probe", "listing"))
            .as_deref(),
        Some("users.a,users.b.c")
    );

    let reason = |payload: &str| match app.invoke_blocking(&directive(payload)).result {
        Ok(h) => match &h.outcomes[0] {
            Outcome::Reject(r) => r.clone(),
            other => panic!("{payload}: {other:?}"),
        },
        Err(e) => panic!("{payload}: the batch failed: {e}"),
    };
    let too_large = reason(&format!(
        "big:{}",
        weir_host::runtime::kv::MAX_VALUE_BYTES + 1
    ));
    assert!(
        too_large.contains("value larger than 65536 bytes"),
        "{too_large}"
    );
    let over = reason(&format!(
        "spam:{}",
        weir_host::runtime::kv::MAX_CALLS_PER_BATCH + 1
    ));
    assert!(over.contains("over budget"), "{over}");
    // 16 values of 64 KiB in one batch pass 1 MiB of keys and values: the
    // 16th is over budget.
    let max_value = weir_host::runtime::kv::MAX_VALUE_BYTES;
    let bigs: Vec<_> = (0..16)
        .map(|_| event("test", "cluster", &format!("big:{max_value}")))
        .collect();
    let handled = app.invoke_blocking(&bigs).result.unwrap();
    assert!(
        handled.outcomes[..15].iter().all(|o| *o == Outcome::Done),
        "{:?}",
        &handled.outcomes[..15]
    );
    assert!(
        matches!(&handled.outcomes[15], Outcome::Reject(r) if r.contains("more than 1048576 bytes")),
        "{:?}",
        handled.outcomes[15]
    );
    let bad_key = reason("put:a b=1");
    assert!(bad_key.contains("invalid key"), "{bad_key}");
    // The budget is per batch: the next batch of the same app, and the
    // bystander's, are served.
    let again = app
        .invoke_blocking(&directive("incr:after"))
        .result
        .unwrap();
    assert_eq!(again.outcomes, vec![Outcome::Done]);
    let other = bystander
        .invoke_blocking(&directive("incr:mine"))
        .result
        .unwrap();
    assert_eq!(other.outcomes, vec![Outcome::Done]);
    assert_eq!(
        rt.block_on(value(&url, "WEIR_KV_bystander", "mine"))
            .as_deref(),
        Some("1")
    );
}

#[test]
fn a_host_gives_a_granted_app_its_bucket() {
    let _heavy = heavy();
    let (nats, _store) = server();
    let url = nats.url();
    let rt = rt();
    rt.block_on(async {
        let plan = ConfigBuilder::new(1, &url)
            .app(
                AppBuilder::new("hits", weir_test_artifacts::KV_PROBE)
                    .events(&["test"])
                    .grants(|g| g.kv = true),
            )
            .valid()
            .plan()
            .unwrap();
        let host = weir_host::Daemon::start(plan).await.unwrap();
        let p = publisher(&url).await.unwrap();
        for i in 0..10 {
            p.publish_event(
                "test",
                "cluster",
                Bytes::from_static(b"incr:hits"),
                &format!("h{i}"),
            )
            .await
            .unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while value(&url, "WEIR_KV_hits", "hits").await.as_deref() != Some("10") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "10 increments not seen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stats = &host.stats()[0];
        assert_eq!((stats.kv_calls, stats.kv_errors), (10, 0), "{stats:?}");
        host.shutdown().await.unwrap();
    });
}
