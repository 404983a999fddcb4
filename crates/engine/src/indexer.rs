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
//! Merges run on their own thread (started by this one), so that a long merge never holds up
//! a flush. Both store manifests, one at a time, each built from the last one stored.
//!
//! Compaction policy: every run has a level; when `merge_fan_in` runs of one level stand
//! side by side, the leftmost of them are merged into one run of the next level (the lowest
//! such level first). The number of runs thus stays below `fan_in × levels` (plus the runs
//! flushed while a merge runs), with levels growing as log base fan-in of the flushes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::engine::Shared;
use crate::error::{EngineError, Result};
use crate::index::RunSource;
use crate::index::keys;
use crate::index::manifest::{self, Manifest, ManifestRun};
use crate::index::memtable::MemTable;
use crate::index::run::{Run, RunWriter, merge_runs};
use crate::index::table::PositionTable;
use crate::log::format::Loc;

/// What the writer hands the indexer, in order.
#[derive(Debug)]
pub enum IndexerJob {
    /// A frozen memtable to write to a run.
    Flush(Arc<MemTable>),
    /// Answered once every job before it is done: the checkpoint then covers every memtable
    /// frozen before. `resume`, when later than the checkpoint, moves it there with no run:
    /// the writer sends it when nothing was left to freeze but the memtable's end moved past
    /// a new segment's header.
    Barrier {
        resume: Option<Loc>,
        reply: oneshot::Sender<Result<()>>,
    },
}

#[derive(Debug)]
pub struct Indexer {
    shared: Arc<Shared>,
    /// The manifest as last stored. Flushes and merges run on two threads and each stores a
    /// new manifest built from this one, under this lock, so neither loses the other's change.
    manifest: Arc<Mutex<Manifest>>,
    /// Runs of one level merged at once (`EngineOptions::merge_fan_in`).
    merge_fan_in: usize,
}

impl Indexer {
    pub fn new(shared: Arc<Shared>, manifest: Manifest, merge_fan_in: usize) -> Indexer {
        Indexer {
            shared,
            manifest: Arc::new(Mutex::new(manifest)),
            merge_fan_in: merge_fan_in.max(2),
        }
    }

    /// The manifest as last stored, under the lock that every flush and merge holds while
    /// they store one. While it is held no run named in it is deleted (a merge deletes its
    /// inputs only after storing the manifest that no longer names them), which is what a
    /// backup needs to link the runs it names.
    pub fn manifest_lock(&self) -> Arc<Mutex<Manifest>> {
        self.manifest.clone()
    }

    /// Runs until the writer hangs up, writing each memtable the writer froze. Merges run on
    /// a second thread, started and joined here: a merge of large runs takes seconds, and
    /// flushes must not wait behind it, or the writer, which waits when too many memtables
    /// are frozen, would stall.
    pub fn run(self, jobs: Receiver<IndexerJob>) {
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let stopping = Arc::new(AtomicBool::new(false));
        let merger = Indexer {
            shared: self.shared.clone(),
            manifest: self.manifest.clone(),
            merge_fan_in: self.merge_fan_in,
        };
        let merger_stopping = stopping.clone();
        let merger_thread = std::thread::Builder::new()
            .name("factstore-merger".into())
            .spawn(move || merger.merge_loop(&woken, &merger_stopping));
        if let Err(error) = &merger_thread {
            tracing::error!(%error, "cannot start the merger thread; index runs will not be merged");
        }
        // Runs left mergeable by the last session.
        let _ = wake.try_send(());
        while let Ok(job) = jobs.recv() {
            let memtable = match job {
                IndexerJob::Flush(memtable) => memtable,
                IndexerJob::Barrier { resume, reply } => {
                    let _ = reply.send(self.barrier(resume));
                    continue;
                }
            };
            if self.shared.poisoned().is_some() {
                continue;
            }
            if let Err(error) = self.flush(&memtable) {
                tracing::error!(%error, "index checkpoint failed; the store is poisoned and accepts no more writes");
                self.shared.poison(format!(
                    "writing an index checkpoint failed: {}",
                    error.public_reason()
                ));
            }
            // A full channel means a wake-up is already pending: nothing is lost.
            let _ = wake.try_send(());
        }
        // The merge under way finishes (it cannot be cut short safely); no new one starts.
        stopping.store(true, Ordering::Release);
        drop(wake);
        if let Ok(thread) = merger_thread {
            let _ = thread.join();
        }
    }

    fn merge_loop(&self, woken: &Receiver<()>, stopping: &AtomicBool) {
        while woken.recv().is_ok() {
            self.shared.index.merging.store(true, Ordering::Release);
            if self.shared.poisoned().is_none()
                && let Err(error) = self.compact(stopping)
            {
                tracing::error!(%error, "index merge failed; the store is poisoned and accepts no more writes");
                self.shared
                    .poison(format!("merging index runs failed: {}", error.public_reason()));
            }
            self.shared.index.merging.store(false, Ordering::Release);
        }
    }

    /// Writes a frozen memtable to a run (see the module docs for the order).
    pub fn flush(&self, frozen: &Arc<MemTable>) -> Result<()> {
        let source = self.write_run(frozen)?;
        let mut manifest = self.manifest.lock();
        let mut next = manifest.clone();
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
        *manifest = next;
        // Under the manifest lock, so that memory changes in the order the manifests were stored.
        self.shared.index.replace_frozen(frozen, Arc::new(source));
        Ok(())
    }

    /// See [`IndexerJob::Barrier`].
    fn barrier(&self, resume: Option<Loc>) -> Result<()> {
        if let Some(reason) = self.shared.poisoned() {
            return Err(EngineError::Poisoned(reason));
        }
        let Some(resume) = resume else {
            return Ok(());
        };
        let mut manifest = self.manifest.lock();
        if resume.0 > manifest.resume {
            let mut next = manifest.clone();
            next.resume = resume.0;
            if let Err(error) = next.store(&*self.shared.fs, &self.shared.index_dir()) {
                tracing::error!(%error, "index checkpoint failed; the store is poisoned and accepts no more writes");
                self.shared.poison(format!(
                    "writing an index checkpoint failed: {}",
                    error.public_reason()
                ));
                return Err(error);
            }
            *manifest = next;
        }
        Ok(())
    }

    /// A fresh run id. It is stored with the next manifest; a crash before then leaves an
    /// unlisted file, removed at the next start.
    fn next_run_path(&self) -> (u64, PathBuf) {
        let mut manifest = self.manifest.lock();
        let id = manifest.next_run_id.max(1);
        manifest.next_run_id = id + 1;
        (id, self.shared.index_dir().join(manifest::run_file_name(id)))
    }

    fn write_run(&self, memtable: &MemTable) -> Result<RunSource> {
        let (id, path) = self.next_run_path();
        let fs = &*self.shared.fs;
        let mut writer = RunWriter::create(fs, &path, memtable.bloom_keys(), keys::bloom_key)?;
        let table = memtable.write_run(&mut writer)?;
        writer.finish(&table.encode())?;
        let dir = self.shared.index_dir();
        fs.sync_dir(&dir).map_err(EngineError::io(&dir))?;
        let run = Run::open(fs, &path)?;
        Ok(RunSource::new(id, 0, run, table))
    }

    /// Merges runs while a group of `merge_fan_in` adjacent runs of one level exists (the
    /// lowest such level first), until none is left or the engine is stopping.
    pub fn compact(&self, stopping: &AtomicBool) -> Result<()> {
        while !stopping.load(Ordering::Acquire) && self.shared.poisoned().is_none() {
            let runs = self.shared.index.snapshot_runs();
            let Some(inputs) = merge_candidate(&runs, self.merge_fan_in) else {
                return Ok(());
            };
            let level = inputs.first().map_or(0, |r| r.level) + 1;
            self.merge(&inputs, level)?;
        }
        Ok(())
    }

    fn merge(&self, inputs: &[Arc<RunSource>], level: u32) -> Result<()> {
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
        {
            // Built from the manifest as it is now: a flush may have stored one meanwhile.
            let mut manifest = self.manifest.lock();
            let mut next = manifest.clone();
            next.runs.retain(|r| !inputs.iter().any(|i| i.id == r.id));
            next.runs.push(ManifestRun { id, level });
            next.store(fs, &dir)?;
            *manifest = next;
            self.shared
                .index
                .replace_runs(inputs, Arc::new(RunSource::new(id, level, run, table)));
        }
        for input in inputs {
            // Readers may still hold the old run open; the file handle keeps it readable.
            let path = input.run.path().to_owned();
            fs.remove_file(&path).map_err(EngineError::io(&path))?;
        }
        fs.sync_dir(&dir).map_err(EngineError::io(&dir))?;
        Ok(())
    }
}

/// The runs to merge next: the first `fan_in` of the leftmost group of at least `fan_in`
/// adjacent runs of one level, taking the lowest level that has such a group.
///
/// Runs are ordered by position and flushes append level-0 runs at the end, so levels do not
/// increase from left to right; merging the leftmost runs of a group keeps it so.
pub fn merge_candidate(runs: &[Arc<RunSource>], fan_in: usize) -> Option<Vec<Arc<RunSource>>> {
    let mut best: Option<&[Arc<RunSource>]> = None;
    let mut start = 0;
    while start < runs.len() {
        let level = runs[start].level;
        let len = runs[start..].iter().take_while(|r| r.level == level).count();
        if len >= fan_in && best.is_none_or(|b| level < b[0].level) {
            best = Some(&runs[start..start + fan_in]);
        }
        start += len;
    }
    best.map(<[Arc<RunSource>]>::to_vec)
}
