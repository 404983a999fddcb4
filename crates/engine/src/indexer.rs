//! The indexer thread: writes frozen memtables to run files, checkpoints the manifest, and
//! merges runs so that their number stays small.
//!
//! The writer freezes the memtable between two groups, when it holds only durable events, and
//! sends it here; this thread never freezes one itself.
//!
//! # Order of a flush (each step durable before the next)
//! 1. Write the run file and `sync_data` it; `sync_dir` the index folder.
//! 2. Store the manifest naming the run and the new checkpoint (atomic replace, see
//!    [`Manifest::store`]).
//! 3. Swap the frozen memtable for the run in memory.
//!
//! A crash before step 2 leaves an unlisted run file, removed at the next start; the log tail
//! it covered is replayed again. A compaction writes its merged run, stores the manifest that
//! lists it instead of its inputs, and only then deletes the inputs.
//!
//! Compaction policy: every run has a level; when four runs of the same level are adjacent at
//! the new end, they are merged into one run of the next level. The number of runs thus stays
//! below `3 × levels`, with levels growing as log4 of the number of flushes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use crate::engine::Shared;
use crate::error::{EngineError, Result};
use crate::index::RunSource;
use crate::index::keys;
use crate::index::manifest::{self, Manifest, ManifestRun};
use crate::index::memtable::MemTable;
use crate::index::run::{Run, RunWriter, merge_runs};
use crate::index::table::PositionTable;

#[derive(Debug)]
pub struct Indexer {
    shared: Arc<Shared>,
    manifest: Manifest,
    /// Runs of one level merged at once (`EngineOptions::merge_fan_in`).
    merge_fan_in: usize,
}

impl Indexer {
    pub fn new(shared: Arc<Shared>, manifest: Manifest, merge_fan_in: usize) -> Indexer {
        Indexer {
            shared,
            manifest,
            merge_fan_in: merge_fan_in.max(2),
        }
    }

    /// Runs until the writer hangs up, writing each memtable the writer froze.
    pub fn run(mut self, frozen: Receiver<Arc<MemTable>>) {
        while let Ok(memtable) = frozen.recv() {
            if self.shared.poisoned().is_some() {
                continue;
            }
            if let Err(error) = self.flush(&memtable).and_then(|()| self.compact()) {
                let reason = format!("index checkpoint failed: {error}");
                tracing::error!(%reason, "the store is poisoned and accepts no more writes");
                self.shared.poison(reason);
            }
        }
    }

    /// Writes a frozen memtable to a run (see the module docs for the order).
    pub fn flush(&mut self, frozen: &Arc<MemTable>) -> Result<()> {
        let source = self.write_run(frozen)?;
        let mut next = self.manifest.clone();
        next.indexed_through = frozen.last_position();
        next.resume = frozen.end().0;
        next.last_recorded_at = frozen
            .recorded_at(frozen.last_position())
            .unwrap_or(next.last_recorded_at);
        next.runs.push(ManifestRun {
            id: source.id,
            level: 0,
        });
        next.store(&*self.shared.fs, &self.shared.index_dir())?;
        self.manifest = next;
        self.shared.index.replace_frozen(frozen, Arc::new(source));
        Ok(())
    }

    fn next_run_path(&mut self) -> (u64, PathBuf) {
        let id = self.manifest.next_run_id.max(1);
        self.manifest.next_run_id = id + 1;
        (id, self.shared.index_dir().join(manifest::run_file_name(id)))
    }

    fn write_run(&mut self, memtable: &MemTable) -> Result<RunSource> {
        let (id, path) = self.next_run_path();
        let fs = &*self.shared.fs;
        let mut writer = RunWriter::create(fs, &path, memtable.bloom_keys(), keys::bloom_key)?;
        let table = memtable.write_run(&mut writer)?;
        writer.finish(&table.encode())?;
        let dir = self.shared.index_dir();
        fs.sync_dir(&dir).map_err(EngineError::io(&dir))?;
        let run = Run::open(fs, &path)?;
        Ok(RunSource {
            id,
            level: 0,
            run,
            table,
        })
    }

    /// Merges the newest runs while `merge_fan_in` of one level stand together at the end.
    pub fn compact(&mut self) -> Result<()> {
        loop {
            let runs = self.shared.index.snapshot_runs();
            let Some(last) = runs.last() else {
                return Ok(());
            };
            let level = last.level;
            let same: Vec<Arc<RunSource>> = runs
                .iter()
                .rev()
                .take_while(|r| r.level == level)
                .cloned()
                .collect();
            if same.len() < self.merge_fan_in {
                return Ok(());
            }
            let mut inputs: Vec<Arc<RunSource>> = same.into_iter().take(self.merge_fan_in).collect();
            inputs.reverse();
            self.merge(&inputs, level + 1)?;
        }
    }

    fn merge(&mut self, inputs: &[Arc<RunSource>], level: u32) -> Result<()> {
        let mut table = PositionTable::default();
        for input in inputs {
            table.extend(&input.table);
        }
        let (id, path) = self.next_run_path();
        let fs = &*self.shared.fs;
        let runs: Vec<&Run> = inputs.iter().map(|i| &i.run).collect();
        merge_runs(fs, &runs, &path, keys::bloom_key, &table.encode())?;
        let dir = self.shared.index_dir();
        fs.sync_dir(&dir).map_err(EngineError::io(&dir))?;
        let run = Run::open(fs, &path)?;
        let mut next = self.manifest.clone();
        next.runs.retain(|r| !inputs.iter().any(|i| i.id == r.id));
        next.runs.push(ManifestRun { id, level });
        next.store(fs, &dir)?;
        self.manifest = next;
        self.shared.index.replace_runs(
            inputs,
            Arc::new(RunSource {
                id,
                level,
                run,
                table,
            }),
        );
        for input in inputs {
            // Readers may still hold the old run open; the file handle keeps it readable.
            let path = input.run.path().to_owned();
            fs.remove_file(&path).map_err(EngineError::io(&path))?;
        }
        fs.sync_dir(&dir).map_err(EngineError::io(&dir))?;
        Ok(())
    }
}
