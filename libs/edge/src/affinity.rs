//! Which core each listener thread runs on.
//!
//! Left to the scheduler, the two listener threads of a 2-core machine often share one core for
//! a while (with a load generator, the instances and the rest of the gateway also runnable), and
//! every connection of the thread that waits then waits too: in the edge bench the router's
//! p99 moved between 1 and 4 ms from run to run, against 0.8 ms in every run with each thread
//! on a core of its own. nginx (`worker_cpu_affinity auto`) and HAProxy (`cpu-map`) offer the
//! same binding.
//!
//! Threads are bound only when the router owns its cores: one thread per CPU the process may
//! run on (`edge.workers = 0` on a machine or a container with a CPU set of its own). A process
//! allowed more CPUs than it runs threads (a container with a CPU quota on a large host, say)
//! is left to the scheduler: binding it to the first CPUs of the host would crowd whatever
//! else runs there.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The CPUs the calling thread may run on, in increasing order; empty when they cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the CPUs this process may run on");
            Vec::new()
        }
    }
}

/// The CPU for each of `threads` listener threads, or `None` when they are left to the
/// scheduler: binding is off, a single CPU (nothing to spread), or not one thread per CPU.
pub fn plan(enabled: bool, threads: usize, allowed: &[usize]) -> Option<Vec<usize>> {
    (enabled && allowed.len() > 1 && threads == allowed.len()).then(|| allowed.to_vec())
}

/// Binds the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> nix::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_per_allowed_cpu_is_bound_in_order() {
        assert_eq!(plan(true, 2, &[0, 1]), Some(vec![0, 1]));
        assert_eq!(plan(true, 3, &[2, 5, 7]), Some(vec![2, 5, 7]));
    }

    #[test]
    fn anything_else_is_left_to_the_scheduler() {
        assert_eq!(plan(false, 2, &[0, 1]), None, "turned off");
        assert_eq!(plan(true, 1, &[0]), None, "a single CPU");
        assert_eq!(
            plan(true, 2, &[0, 1, 2, 3]),
            None,
            "fewer threads than CPUs"
        );
        assert_eq!(plan(true, 4, &[0, 1]), None, "more threads than CPUs");
        assert_eq!(plan(true, 2, &[]), None, "CPUs unknown");
    }

    #[test]
    fn a_thread_is_bound_to_the_cpu_given() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty(), "this process runs on some CPU");
        let last = *allowed.last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_current_thread(last).unwrap();
            allowed_cpus()
        })
        .join()
        .unwrap();
        assert_eq!(seen, [last]);
        assert_eq!(allowed_cpus(), allowed, "other threads keep their CPUs");
    }
}
