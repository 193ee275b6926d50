//! CPU time of processes, from `/proc` (Linux).

/// The fields of `/proc/<pid>/stat` after the command (field 3 onwards); empty when the
/// process is gone.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// utime + stime of `pid` (all its threads), in seconds; 0 when it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let fields = stat_fields(pid);
    // Fields 14 and 15 (utime, stime), counted from field 3; in USER_HZ, which Linux fixes at
    // 100 for /proc.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// CPU seconds of `pid` and its live children (nginx's master and its workers).
#[allow(dead_code)] // not every bench measures a process tree
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| stat_fields(p).get(1).and_then(|f| f.parse::<u32>().ok()) == Some(pid));
    cpu_seconds(pid) + children.map(cpu_seconds).sum::<f64>()
}
