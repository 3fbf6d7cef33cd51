//! Criterion benchmarks of the reconciler tick over generated towns
//! (DESIGN.md §8): snapshot load, pure reconcile, apply, and the full tick
//! (drain events, snapshot, reconcile, apply; effects excluded), each on an
//! in-memory and on a WAL-file database.
//!
//! Run: `cargo bench -p gastown --bench tick` (add `-- M` to filter).
//! Every measured operation runs in a transaction that is rolled back, so
//! each iteration sees the same generated state.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gastown::generate::{self, Storage, TownShape};
use gastown::town::actions;
use gastown::town::reconciler::reconcile;
use gastown::town::snapshot::TownSnapshot;
use std::hint::black_box;
use std::path::PathBuf;

fn storages() -> Vec<(&'static str, Option<PathBuf>)> {
    let dir = std::env::temp_dir().join(format!("gastown-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    vec![("memory", None), ("wal", Some(dir.join("town.db")))]
}

fn shapes() -> Vec<TownShape> {
    vec![TownShape::s(), TownShape::m(), TownShape::m_history(), TownShape::l()]
}

fn bench_tick(c: &mut Criterion) {
    for shape in shapes() {
        for (storage, path) in storages() {
            let store = match &path {
                Some(p) => Storage::WalFile(p),
                None => Storage::Memory,
            };
            let (mut town, _clock) = generate::build(&shape, store, 1).expect("generated town");
            let id = format!("{}/{storage}", shape.name);
            let mut g = c.benchmark_group("tick");
            g.sample_size(if shape.name == "L" { 20 } else { 100 });

            g.bench_function(BenchmarkId::new("snapshot_load", &id), |b| {
                b.iter(|| town.dry_run(|cx, cfg, _| TownSnapshot::load(cx.conn, cx.now, false, cfg)).unwrap())
            });

            let snapshot = town.dry_run(|cx, cfg, _| TownSnapshot::load(cx.conn, cx.now, false, cfg)).unwrap();
            g.bench_function(BenchmarkId::new("reconcile", &id), |b| {
                b.iter(|| black_box(reconcile(black_box(&snapshot))))
            });

            let planned = reconcile(&snapshot);
            g.bench_function(BenchmarkId::new("apply", &id), |b| {
                b.iter(|| {
                    town.dry_run(|cx, _, town_id| {
                        for a in &planned {
                            let _ = actions::apply(cx, town_id, a);
                        }
                        Ok(())
                    })
                    .unwrap()
                })
            });

            g.bench_function(BenchmarkId::new("full_tick", &id), |b| b.iter(|| black_box(town.plan_tick().unwrap())));
            g.finish();
        }
    }
}

criterion_group!(benches, bench_tick);
criterion_main!(benches);
