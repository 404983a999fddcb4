//! The file descriptor limit, read at start: every connection is one descriptor, and a server
//! that runs out of them cannot accept `/health`, open a segment or write a journal.
//!
//! `factstore serve` raises the soft limit (RLIMIT_NOFILE) up to the hard one when its
//! `--max-connections` needs more, as many servers do, and lowers `--max-connections` with a
//! warning when even the hard limit is too small.

/// Descriptors kept for everything but connections: the log's segments, index runs,
/// journals of projections and groups, the listener, PostgreSQL's connections.
pub const RESERVED_FDS: u64 = 256;

/// The connections the process can serve: `wanted` when the limit allows it (raising the soft
/// limit if need be), else as many as it allows, with a warning. `extra` are the connections
/// accepted beyond the bound (the overflow lane).
pub fn connections_allowed(wanted: usize, extra: usize) -> usize {
    let needed = wanted as u64 + extra as u64 + RESERVED_FDS;
    let soft = raise_to(needed);
    match soft {
        Some(soft) if soft < needed => {
            let allowed = soft.saturating_sub(extra as u64 + RESERVED_FDS).max(16) as usize;
            tracing::warn!(
                file_descriptors = soft,
                "--max-connections {wanted} needs {needed} file descriptors but the limit (ulimit -n) is {soft}: \
                 serving at most {allowed} connections; raise the limit to serve more"
            );
            allowed
        }
        _ => wanted,
    }
}

/// Raises the soft limit towards `needed` (never above the hard limit, never lowering it);
/// returns the soft limit in force, or `None` when there is none to speak of.
#[cfg(unix)]
fn raise_to(needed: u64) -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current?;
    if soft >= needed {
        return Some(soft);
    }
    let target = limit.maximum.map_or(needed, |hard| hard.min(needed));
    if target <= soft {
        return Some(soft);
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        },
    ) {
        Ok(()) => {
            tracing::debug!(from = soft, to = target, "raised the file descriptor limit");
            Some(target)
        }
        Err(error) => {
            tracing::warn!(%error, "could not raise the file descriptor limit");
            Some(soft)
        }
    }
}

#[cfg(not(unix))]
fn raise_to(_needed: u64) -> Option<u64> {
    None
}
