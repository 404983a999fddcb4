//! How long a workload runs: a warm-up, then a duration or a number of requests.
//!
//! Workers ask [`Control::next`] before each request. It costs a clock read and, when the run is
//! counted, one atomic increment: nothing that would show next to a network round trip.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;

/// The run-length options shared by the timed workloads.
#[derive(Debug, Clone, clap::Args)]
pub struct RunLength {
    /// How long to measure (e.g. 10s, 500ms, 2m). Ignored when --requests is given.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Measure exactly this many requests in all (across every client) instead of a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Send requests for this long first without measuring them (caches, connections, the
    /// server's memtables warm up). Warm-up writes are real writes.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
}

impl RunLength {
    pub fn describe(&self, params: &mut Vec<(&'static str, Value)>) {
        match self.requests {
            Some(requests) => params.push(("requests", requests.into())),
            None => params.push(("duration", format_duration(self.duration).into())),
        }
        params.push(("warmup", format_duration(self.warmup).into()));
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h` or a plain number of seconds (`2.5`).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let Ok(number) = number.parse::<f64>() else {
        bail!("'{text}' is not a duration (e.g. 10s, 500ms, 2m)");
    };
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => bail!("unknown unit '{other}' in '{text}' (use ms, s, m or h)"),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| anyhow::anyhow!("'{text}': {e}"))
}

pub fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// What a worker does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Send a request but do not record it.
    Warmup,
    /// Send a request and record it; the number is its ticket (0, 1, 2... across all workers
    /// when the run is counted, else 0).
    Measured(u64),
    /// Stop.
    Stop,
}

/// The shared state of one part's run.
#[derive(Debug)]
pub struct Control {
    measure_from: Instant,
    deadline: Option<Instant>,
    limit: Option<u64>,
    taken: AtomicU64,
    stopped: AtomicBool,
}

impl Control {
    /// Starts the clock now: a warm-up, then `length`'s duration or number of requests.
    pub fn start(length: &RunLength) -> Control {
        match length.requests {
            Some(requests) => Control::counted(length.warmup, requests),
            None => Control::timed(length.warmup, length.duration),
        }
    }

    pub fn timed(warmup: Duration, duration: Duration) -> Control {
        let measure_from = Instant::now() + warmup;
        Control {
            measure_from,
            deadline: Some(measure_from + duration),
            limit: None,
            taken: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    /// Exactly `requests` measured tickets, numbered 0..requests.
    pub fn counted(warmup: Duration, requests: u64) -> Control {
        Control {
            measure_from: Instant::now() + warmup,
            deadline: None,
            limit: Some(requests),
            taken: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    /// Runs until [`Control::stop`] is called.
    pub fn open(warmup: Duration) -> Control {
        Control {
            measure_from: Instant::now() + warmup,
            deadline: None,
            limit: None,
            taken: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    /// When measuring begins (after the warm-up).
    pub fn measure_from(&self) -> Instant {
        self.measure_from
    }

    pub fn next(&self) -> Turn {
        if self.stopped.load(Ordering::Relaxed) {
            return Turn::Stop;
        }
        let now = Instant::now();
        if now < self.measure_from {
            return Turn::Warmup;
        }
        if let Some(deadline) = self.deadline
            && now >= deadline
        {
            return Turn::Stop;
        }
        match self.limit {
            Some(limit) => {
                let ticket = self.taken.fetch_add(1, Ordering::Relaxed);
                if ticket < limit {
                    Turn::Measured(ticket)
                } else {
                    Turn::Stop
                }
            }
            None => Turn::Measured(0),
        }
    }

    /// Makes every later [`Control::next`] answer [`Turn::Stop`].
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms").ok(), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2.5").ok(), Some(Duration::from_millis(2500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn counted_runs_hand_out_each_ticket_once() {
        let control = Control::counted(Duration::ZERO, 3);
        let turns: Vec<Turn> = (0..5).map(|_| control.next()).collect();
        assert_eq!(
            turns,
            [
                Turn::Measured(0),
                Turn::Measured(1),
                Turn::Measured(2),
                Turn::Stop,
                Turn::Stop
            ]
        );
    }

    #[test]
    fn warmup_comes_first_and_stop_ends_an_open_run() {
        let control = Control::open(Duration::from_secs(3600));
        assert_eq!(control.next(), Turn::Warmup);
        control.stop();
        assert_eq!(control.next(), Turn::Stop);
        let timed = Control::timed(Duration::ZERO, Duration::ZERO);
        assert_eq!(timed.next(), Turn::Stop);
    }
}
