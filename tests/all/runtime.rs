//! Runtime properties: artifact cache, pool sizing, refusals, isolation of
//! spinning guests from the async runtime.

use std::time::{Duration, Instant};

use weir_host::{AppSpec, DeployError, EngineConfig, Limits, LoadSource, Outcome, Runtime};

use crate::common::{deploy, directive};

#[test]
fn artifact_cache_round_trips_and_refuses_tampered_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        cache_dir: Some(dir.path().join("cache")),
        pool_instances: 4,
        ..Default::default()
    };
    let bytes = std::fs::read(weir_test_artifacts::ECHO).unwrap();
    let first = Runtime::new(config.clone()).unwrap();
    assert_eq!(first.check(&bytes).unwrap().source, LoadSource::Compiled);
    assert_eq!(first.check(&bytes).unwrap().source, LoadSource::Memory);
    let second = Runtime::new(config.clone()).unwrap();
    assert_eq!(second.check(&bytes).unwrap().source, LoadSource::Disk);
    // Tamper with the artifact: its digest no longer matches, so it is
    // recompiled rather than deserialized.
    let artifact = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .unwrap();
    let mut data = std::fs::read(&artifact).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&artifact, data).unwrap();
    let third = Runtime::new(config).unwrap();
    assert_eq!(third.check(&bytes).unwrap().source, LoadSource::Compiled);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("cache"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "cache directory must be private, mode {mode:o}"
        );
    }
}

#[test]
fn malformed_components_are_refused_with_a_reason() {
    let rt = crate::common::runtime();
    let cases: [(&[u8], &str); 4] = [
        (b"", "magic"),
        (b"definitely not wasm", "magic"),
        (b"\0asm\x01\0\0\0", "core wasm module"),
        (b"\0asm\x0d\0\x01\0\x07\x03garbage", "failed to compile"),
    ];
    for (bytes, needle) in cases {
        let err = rt.check(bytes).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
    let echo = std::fs::read(weir_test_artifacts::ECHO).unwrap();
    let truncated = rt.check(&echo[..echo.len() / 2]).unwrap_err();
    assert!(matches!(truncated, DeployError::Compile(_)), "{truncated}");
}

#[test]
fn oversized_component_is_refused_before_compiling() {
    let rt = Runtime::new(EngineConfig {
        max_component_bytes: 1024,
        pool_instances: 2,
        ..Default::default()
    })
    .unwrap();
    let echo = std::fs::read(weir_test_artifacts::ECHO).unwrap();
    let err = rt.check(&echo).unwrap_err();
    assert!(
        matches!(err, DeployError::TooLarge { cap: 1024, .. }),
        "{err}"
    );
}

/// Pool slots are shared, not reserved per app: 20 apps deploy into a pool of
/// 2 and all their batches, started at once, are served (waiting for a slot
/// in turn), while at most 2 instances are live at any moment.
#[test]
fn apps_share_pool_slots() {
    let _heavy = crate::common::heavy();
    let rt = Runtime::new(EngineConfig {
        pool_instances: 2,
        ..Default::default()
    })
    .unwrap();
    let path: &std::path::Path = weir_test_artifacts::ECHO.as_ref();
    let apps: Vec<_> = (0..20)
        .map(|i| {
            rt.deploy_file(AppSpec::new(format!("a{i}"), 1, "n"), path)
                .unwrap()
        })
        .collect();
    let results = crate::nats::rt().block_on(async {
        let calls = apps.iter().map(|app| {
            app.invoke(vec![
                crate::common::event("test", "cluster", "hello"),
                crate::common::event("test", "cluster", "retry:5"),
            ])
        });
        futures::future::join_all(calls).await
    });
    for inv in results {
        assert_eq!(
            inv.result.expect("every app is served").outcomes,
            vec![Outcome::Done, Outcome::Retry(5)]
        );
    }
}

#[test]
fn invalid_app_config_reports_every_problem() {
    let rt = crate::common::runtime();
    let mut spec = AppSpec::new("bad", 1, "n");
    spec.domains = vec!["ok.example.org".into(), "bad_domain".into()];
    spec.limits = Limits {
        fuel: 0,
        memory_bytes: 1 << 40,
        ..Limits::default()
    };
    let err = rt
        .deploy_file(spec, weir_test_artifacts::ECHO.as_ref())
        .unwrap_err();
    let DeployError::Config(problems) = &err else {
        panic!("{err}")
    };
    assert_eq!(problems.len(), 3, "{problems:?}");
}

#[test]
fn fresh_instance_per_batch_keeps_no_state() {
    // The echo handler's SDK state (outcomes, effects) starts empty each time:
    // a restart asked for in one batch never shows up in the next.
    let app = deploy("isolation", weir_test_artifacts::ECHO, Limits::default());
    let first = app
        .invoke_blocking(&directive("restart:x.service"))
        .result
        .unwrap();
    assert_eq!(first.effects.len(), 1);
    let second = app.invoke_blocking(&directive("hello")).result.unwrap();
    assert!(second.effects.is_empty());
}

#[test]
fn spinning_guests_do_not_stall_the_async_runtime() {
    let _heavy = crate::common::heavy();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let spin = deploy(
            "spin-async",
            weir_test_artifacts::INFINITE_LOOP,
            Limits {
                deadline_ms: 1_000,
                fuel: u64::MAX / 2,
                ..Limits::default()
            },
        );
        let echo = deploy("echo-async", weir_test_artifacts::ECHO, Limits::default());
        let start = Instant::now();
        // One spinning guest per worker thread.
        let spinners: Vec<_> = (0..2)
            .map(|_| {
                let spin = spin.clone();
                tokio::spawn(async move { spin.invoke(directive("spin")).await })
            })
            .collect();
        // A timer on the same runtime keeps firing, and a bystander's batch
        // completes, while both guests spin.
        let mut ticks = 0;
        let mut interval = tokio::time::interval(Duration::from_millis(20));
        while ticks < 10 {
            interval.tick().await;
            ticks += 1;
        }
        let echoed = echo.invoke(directive("hello")).await;
        let bystander_done = start.elapsed();
        assert!(echoed.result.is_ok());
        // Both spinners must still be running: had they held the workers,
        // the timer and the bystander could only finish after their 1 s
        // deadline, when they are done.
        let still_spinning = spinners.iter().filter(|s| !s.is_finished()).count();
        assert_eq!(
            still_spinning, 2,
            "timer and bystander finished at {bystander_done:?}, after a spinner (deadline 1 s)"
        );
        assert!(
            bystander_done < Duration::from_millis(1_000),
            "timer and bystander finished at {bystander_done:?}, not before the spinners' 1 s deadline"
        );
        for s in spinners {
            let inv = s.await.unwrap();
            assert!(
                matches!(inv.result, Err(weir_host::InvokeError::Timeout { .. })),
                "{:?}",
                inv.result
            );
        }
    });
}

#[test]
fn compile_timeout_is_a_typed_error() {
    let config = EngineConfig {
        compile_timeout_ms: 1,
        pool_instances: 2,
        ..Default::default()
    };
    let rt = Runtime::new(config).unwrap();
    let echo = std::fs::read(weir_test_artifacts::ECHO).unwrap();
    let err = rt.check(&echo).unwrap_err();
    assert!(matches!(err, DeployError::CompileTimeout(_)), "{err}");
}

#[test]
fn unusable_cache_dir_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let config = EngineConfig {
        cache_dir: Some(file.join("cache")),
        pool_instances: 2,
        ..Default::default()
    };
    let err = Runtime::new(config).unwrap_err();
    assert!(matches!(err, DeployError::Cache(_)), "{err}");
}

#[test]
fn pool_that_cannot_be_reserved_falls_back_to_on_demand() {
    // 100,000 instances × 2 memories × 64 GiB slots is far beyond the 128 TiB
    // of user address space: the pool cannot be reserved.
    let config = EngineConfig {
        pool_instances: 100_000,
        max_memory_bytes: 64 << 30,
        ..Default::default()
    };
    let rt = Runtime::new(config).unwrap();
    assert!(!rt.pooling());
    let app = rt
        .deploy_file(
            AppSpec::new("fallback", 1, "n"),
            weir_test_artifacts::ECHO.as_ref(),
        )
        .unwrap();
    assert!(app.invoke_blocking(&directive("hello")).result.is_ok());
}

/// Of the 100 bit-flipped copies of `echo` (fixed seed), at least this many
/// must no longer validate (93 measured; the exact count depends on the
/// `echo` build, whose bytes carry its build path). The others (flips in
/// names, custom sections or data) are valid components: each is deployed
/// and invoked, and must answer or fail with a typed error.
const MIN_MUTATED_REFUSED: usize = 80;

#[test]
fn random_and_mutated_components_are_refused_without_crashing() {
    // 100 random byte strings and 100 copies of a real component with
    // random bytes flipped: each is refused with a reason or (rarely, when a
    // flip lands in a custom section) accepted; none panics the host.
    let rt = crate::common::runtime();
    let echo = std::fs::read(weir_test_artifacts::ECHO).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut random_refused, mut mutated_refused) = (0, 0);
    for i in 0..200 {
        let bytes = if i < 100 {
            let len = (next() % 4096) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 && b.len() >= 8 {
                // A valid component header, so parsing goes further.
                b[..8].copy_from_slice(b"\0asm\x0d\0\x01\0");
            }
            b
        } else {
            let mut b = echo.clone();
            for _ in 0..1 + next() % 8 {
                let at = (next() as usize) % b.len();
                b[at] ^= 1 << (next() % 8);
            }
            b
        };
        let refused = match rt.check(&bytes) {
            Ok(report) if report.deployable() => {
                let app = rt
                    .deploy(AppSpec::new(format!("mutated{i}"), 1, "n"), &bytes)
                    .unwrap();
                // An answer or a typed failure, never a crash of the host.
                let _ = app.invoke_blocking(&directive("hello")).result;
                false
            }
            Ok(_) => true,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                true
            }
        };
        if refused && i < 100 {
            random_refused += 1;
        } else if refused {
            mutated_refused += 1;
        }
    }
    eprintln!("refused: {random_refused} of 100 random, {mutated_refused} of 100 mutated");
    assert_eq!(random_refused, 100, "every random byte string is refused");
    assert!(
        mutated_refused >= MIN_MUTATED_REFUSED,
        "mutated components refused: {mutated_refused}"
    );
}
