//! The same CPU budget for each server a benchmark compares.
//!
//! On a small machine the load generator (SIPp) needs more CPU than the
//! servers it drives, so left alone both servers run at the rate the
//! generator leaves them and the comparison measures the generator. A
//! budget — a CFS bandwidth quota on a control group holding the server's
//! processes — makes the server the bottleneck again: each server gets the
//! same share of one CPU, the generator gets the rest of the machine, and
//! the throughput each reaches is what that share buys it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A control group whose processes together may use `percent` % of one CPU.
/// Its processes go back to the root group when it is dropped.
#[derive(Debug)]
pub struct CpuBudget {
    dir: PathBuf,
    root: PathBuf,
    percent: u32,
}

impl CpuBudget {
    /// Creates the group `name`. The quota is enforced every few
    /// milliseconds (1 ms of CPU per period, the kernel's smallest quota), so
    /// a throttled server waits at most a couple of milliseconds.
    pub fn new(name: &str, percent: u32) -> Result<Self> {
        if !(1..=100).contains(&percent) {
            bail!("a CPU budget is 1-100 % of one CPU, not {percent}");
        }
        let quota_us = 1000u64;
        let period_us = quota_us * 100 / u64::from(percent);
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        let (root, dir) = if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(name);
            make_dir(&dir)?;
            write(&dir.join("cpu.cfs_period_us"), &period_us.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
            (v1.to_path_buf(), dir)
        } else if v2.join("cgroup.controllers").exists() {
            // The cpu controller must be on for the root's children.
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            let dir = v2.join(name);
            make_dir(&dir)?;
            write(&dir.join("cpu.max"), &format!("{quota_us} {period_us}"))?;
            (v2.to_path_buf(), dir)
        } else {
            bail!("no cgroup cpu controller under /sys/fs/cgroup");
        };
        Ok(Self { dir, root, percent })
    }

    pub fn percent(&self) -> u32 {
        self.percent
    }

    /// Moves `pid` (all its threads) and its child processes into the group.
    pub fn add(&self, pid: u32) -> Result<()> {
        for p in std::iter::once(pid).chain(children(pid)) {
            write(&self.dir.join("cgroup.procs"), &p.to_string())?;
        }
        Ok(())
    }

    /// The group's periods so far: how many it had work in, and how many
    /// of those it was held back in. When it is held back in nearly all,
    /// the budget limited the server; when in fewer, the load did.
    pub fn periods(&self) -> Periods {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        let field = |name: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0)
        };
        Periods {
            active: field("nr_periods"),
            throttled: field("nr_throttled"),
        }
    }
}

/// Counts of a group's CFS periods (`nr_periods`, `nr_throttled`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Periods {
    pub active: u64,
    pub throttled: u64,
}

impl std::ops::Sub for Periods {
    type Output = Periods;

    fn sub(self, earlier: Periods) -> Periods {
        Periods {
            active: self.active.saturating_sub(earlier.active),
            throttled: self.throttled.saturating_sub(earlier.throttled),
        }
    }
}

impl Periods {
    /// The share of the periods with work that were held back, in %.
    pub fn held_percent(self) -> f64 {
        self.throttled as f64 * 100.0 / self.active.max(1) as f64
    }
}

impl std::fmt::Display for Periods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "held back in {} of {} periods, {:.0} %",
            self.throttled,
            self.active,
            self.held_percent()
        )
    }
}

impl Drop for CpuBudget {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for p in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), p);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn make_dir(dir: &Path) -> Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
}

fn write(file: &Path, value: &str) -> Result<()> {
    std::fs::write(file, value)
        .with_context(|| format!("cannot write {value} to {}", file.display()))
}

/// Clock ticks a second in `/proc/<pid>/stat` (USER_HZ on Linux).
const TICKS: f64 = 100.0;

/// The numeric fields of `/proc/<pid>/stat` after `(comm)`, from the
/// third (state is index 0); empty when the process is gone.
fn stat_fields(pid: u32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect()
}

/// The sum of `/proc/<pid>/stat` fields from index `from` to `to` (see
/// [`stat_fields`]) in seconds.
fn ticks(pid: u32, from: usize, to: usize) -> f64 {
    let f = stat_fields(pid);
    f.get(from..=to).map_or(0, |t| t.iter().sum::<u64>()) as f64 / TICKS
}

/// CPU seconds (user + system) `pid` has used so far, all its threads
/// together (0 when it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    // utime and stime, the stat file's 14th and 15th fields.
    ticks(pid, 11, 12)
}

/// CPU seconds used so far by `pid`, its live child processes and the
/// children it has reaped: a forking server's whole work (a client's
/// connection process that ended still counts).
pub fn cpu_seconds_with_children(pid: u32) -> f64 {
    // utime, stime, then cutime and cstime (children waited for).
    ticks(pid, 11, 14) + children(pid).into_iter().map(cpu_seconds).sum::<f64>()
}

/// The processes whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(this) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, after)| after.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(this);
        }
    }
    out
}
