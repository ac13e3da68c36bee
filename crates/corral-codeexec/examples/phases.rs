//! Times where a warm run goes: `cargo run --release -p corral-codeexec --example phases`.
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn main() {
    let cache = std::path::PathBuf::from(std::env::var("CACHE").expect("CACHE"));
    let sb = codeexec::Sandbox::new(&cache).unwrap();
    let rt = codeexec::Runtime::parse(&std::env::var("RT").unwrap_or("python".into())).unwrap();
    sb.prepare(rt).unwrap();
    let code = std::env::var("CODE").unwrap_or_else(|_| {
        "import time; a=time.time(); print('hello world'); print(a, time.time())".into()
    });
    let mut rows = Vec::new();
    for _ in 0..25 {
        let t0 = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let i0 = Instant::now();
        let out = sb
            .run(codeexec::Job {
                runtime: rt,
                code: &code,
                stdin: codeexec::Stdin::Bytes(b""),
                limits: Default::default(),
                ruby_gems: false,
            })
            .unwrap();
        let total = i0.elapsed().as_secs_f64() * 1000.0;
        let t3 = t0 + total / 1000.0;
        let nums: Vec<f64> = out
            .stdout
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if nums.len() >= 2 {
            rows.push((total, (nums[0] - t0) * 1000.0, (t3 - nums[1]) * 1000.0));
        } else {
            rows.push((total, 0.0, 0.0));
            if rows.len() == 1 {
                eprintln!("{out:?}");
            }
        }
    }
    let med = |f: fn(&(f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!(
        "total {:.2} ms  until user code {:.2}  after user code {:.2}",
        med(|r| r.0),
        med(|r| r.1),
        med(|r| r.2)
    );
}
