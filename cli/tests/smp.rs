//! Debian's stock cloud kernel on several vCPUs (`-smp 2` and `-smp 4`), each a host
//! thread: the kernel must bring every application processor up through INIT and
//! start-up IPIs, keep the TSC as its clocksource (all vCPUs read one clock), and run
//! several processes at once with correct results on every CPU.

mod common;

use common::{assert_clean_run, boot_with, find_line, image};
use test_images::Flavour;

/// The script: topology facts, then `jobs` hashing jobs started together, each over its
/// own input (`seq 1 <n>`, a different `n` per job), then the per-CPU time counters.
fn script(jobs: usize) -> String {
    let mut s = String::from(
        "echo \"NPROC=$(nproc)\"\n\
         echo \"ONLINE=$(cat /sys/devices/system/cpu/online)\"\n\
         echo \"CLOCKSOURCE=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)\"\n\
         echo \"BROUGHT-UP=$(dmesg | grep -o 'Brought up .*')\"\n",
    );
    for job in 1..=jobs {
        s.push_str(&format!(
            "(seq 1 {} | sha256sum > /tmp/job{job}) &\n",
            seq_len(job)
        ));
    }
    s.push_str("wait\n");
    for job in 1..=jobs {
        s.push_str(&format!("echo \"JOB{job}=$(cat /tmp/job{job})\"\n"));
    }
    s.push_str("grep '^cpu[0-9]' /proc/stat | sed 's/^/STAT /'\n");
    s.push_str("dmesg | grep -i -E 'tsc.*(unstable|unsynchron)' | sed 's/^/TSC-TROUBLE /'\n");
    s
}

/// How many numbers job `job` hashes (about 0.5 to 1 MB of text each).
fn seq_len(job: usize) -> usize {
    60_000 + 17_000 * job
}

/// What `seq 1 n | sha256sum` prints, computed on the host.
fn seq_hash(n: usize) -> String {
    let text: String = (1..=n).map(|i| format!("{i}\n")).collect();
    test_images::fetch::sha256_hex(text.as_bytes())
}

fn boots_with_every_cpu_working(cpus: usize) {
    let image = image(Flavour::Cloud);
    let cpus_arg = cpus.to_string();
    let jobs = cpus * 2;
    let run = boot_with(image, &script(jobs), &["-smp".as_ref(), cpus_arg.as_ref()]);
    assert_clean_run(&run, &["TSC-TROUBLE", "BUG:", "soft lockup"]);
    assert_eq!(
        find_line(&run, "NPROC=").1,
        cpus_arg,
        "{}",
        run.transcript()
    );
    let online = if cpus == 1 {
        "0".to_string()
    } else {
        format!("0-{}", cpus - 1)
    };
    assert_eq!(find_line(&run, "ONLINE=").1, online);
    assert_eq!(
        find_line(&run, "CLOCKSOURCE=").1,
        "tsc",
        "the kernel gave up the TSC\n{}",
        run.transcript()
    );
    assert!(
        find_line(&run, "BROUGHT-UP=")
            .1
            .ends_with(&format!("{cpus} CPUs")),
        "{}",
        run.transcript()
    );
    for job in 1..=jobs {
        let (_, line) = find_line(&run, &format!("JOB{job}="));
        assert_eq!(
            line.split_whitespace().next(),
            Some(seq_hash(seq_len(job)).as_str()),
            "job {job} computed a wrong hash\n{}",
            run.transcript()
        );
    }
    // Every CPU spent time running something other than its idle loop.
    let busy: Vec<(String, u64)> = run
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("STAT "))
        .map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next().unwrap_or_default().to_string();
            // user, nice, system
            let work = f.take(3).filter_map(|v| v.parse::<u64>().ok()).sum();
            (name, work)
        })
        .collect();
    assert_eq!(busy.len(), cpus, "{}", run.transcript());
    for (cpu, work) in &busy {
        assert!(*work > 0, "{cpu} never ran anything\n{}", run.transcript());
    }
}

#[test]
fn two_cpus_come_up_keep_the_tsc_and_share_the_work() {
    boots_with_every_cpu_working(2);
}

#[test]
fn four_cpus_come_up_keep_the_tsc_and_share_the_work() {
    boots_with_every_cpu_working(4);
}
