//! Which process started an instance: `host:pid:start` (the start time, in
//! clock ticks after boot, tells a reused pid apart). Several dispatchers
//! may share one state directory or engine; a restarted one removes only
//! the instances of processes that are gone, not those of its live peers.

/// This process: `host:pid:start`.
pub fn this_process() -> String {
    let pid = std::process::id();
    format!("{}:{pid}:{}", hostname(), start_time(pid).unwrap_or(0))
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// A process's start time (clock ticks after boot), from `/proc`.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `host`, `pid` and `start` of a `host:pid:start` id (the host may hold
/// colons).
fn parse(id: &str) -> Option<(&str, u32, u64)> {
    let mut parts = id.rsplitn(3, ':');
    let (start, pid, host) = (parts.next()?, parts.next()?, parts.next()?);
    Some((host, pid.parse().ok()?, start.parse().ok()?))
}

/// Whether `id` names a process of this machine that is gone: what it
/// held need not be waited for.
pub fn gone_from_here(id: &str) -> bool {
    parse(id).is_some_and(|(host, pid, start)| host == hostname() && start_time(pid) != Some(start))
}

/// Whether `id` names a process of this machine that still runs and is not
/// this one.
pub fn other_live_process_here(id: &str) -> bool {
    parse(id).is_some_and(|(host, pid, start)| {
        host == hostname() && pid != std::process::id() && start_time(pid) == Some(start)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_not_another() {
        let me = this_process();
        assert!(!gone_from_here(&me), "{me}");
        assert!(!other_live_process_here(&me), "{me}");
    }

    #[test]
    fn a_pid_with_another_start_time_is_gone_and_other_hosts_are_unknown() {
        let pid = std::process::id();
        let start = start_time(pid).expect("own stat");
        let reused = format!("{}:{pid}:{}", hostname(), start + 1);
        assert!(gone_from_here(&reused));
        assert!(!other_live_process_here(&reused));
        let elsewhere = format!("some-other-host:{pid}:{start}");
        assert!(!gone_from_here(&elsewhere));
        assert!(!other_live_process_here(&elsewhere));
        assert!(!gone_from_here("garbage"));
    }

    #[test]
    fn the_parent_process_is_another_live_one() {
        let ppid = std::os::unix::process::parent_id();
        let parent = format!("{}:{ppid}:{}", hostname(), start_time(ppid).expect("stat"));
        assert!(other_live_process_here(&parent), "{parent}");
    }
}
