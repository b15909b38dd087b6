//! Training shared between ranks under a real `mpirun` (Open MPI): two ranks give the weights of
//! one process bit for bit, a two-rank run resumes on one rank exactly, and every refusal is a
//! clear message with no checkpoint written. Skipped, saying so, where `mpirun` is absent
//! (`.ci/run` installs Open MPI).

mod common;

use common::stderr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use terse::checkpoint::{load_model, load_training};

/// Where `mpirun` is present: a scratch directory holding the first `bytes` of the sample corpus
/// (`corpus.txt`), and that file.
fn setup(bytes: usize) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if !mpirun_present() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::sample_prefix(dir.path(), bytes);
    Some((dir, corpus))
}

fn mpirun_present() -> bool {
    let found = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED (no mpirun: install Open MPI, Debian's openmpi-bin)");
    }
    found
}

/// `mpirun -np N` running `program args` (root allowed and cores oversubscribed, as on CI).
fn mpirun(n: usize, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "-np", &n.to_string(), program])
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdin(Stdio::null());
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("run mpirun")
}

/// Asserts that the job failed and that each of its 2 ranks said `message` after its name.
fn assert_every_rank_says(r: &Output, message: &str) {
    assert!(!r.status.success(), "the job succeeded");
    let err = stderr(r);
    for rank in 0..2 {
        assert!(
            err.contains(&format!("rank {rank} of 2: {message}")),
            "{err}"
        );
    }
}

/// `terse train` flags of a small M1 run of `steps` steps on `data` into `out`.
fn train_args(data: &Path, out: &Path, steps: u64) -> Vec<String> {
    [
        "train",
        "--preset",
        "tiny",
        "--seq",
        "32",
        "--batch",
        "4",
        "--lr",
        "3e-3",
        "--heldout-bytes",
        "2000",
        "--eval-every",
        "3",
        "--eval-windows",
        "10",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--data".into(),
        data.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--steps".into(),
        steps.to_string(),
    ])
    .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The weights and AdamW moments of the checkpoint at `dir`, as bits.
fn checkpoint_bits(dir: &Path) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let (_, w) = load_model(dir).unwrap();
    let (_, _, st) = load_training(dir).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect();
    (bits(&w.data), bits(&st.m), bits(&st.v))
}

/// Each step's logged numbers (without the speed), as text.
fn metrics(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("tokens_per_s");
            v.to_string()
        })
        .collect()
}

#[test]
fn two_and_four_ranks_train_the_bits_of_one_process_and_resume_on_one() {
    let Some((dir, data)) = setup(20_000) else {
        return;
    };
    let terse = env!("CARGO_BIN_EXE_terse");
    let (one, two, split) = (
        dir.path().join("one"),
        dir.path().join("two"),
        dir.path().join("split"),
    );
    let r = common::terse(&strs(&train_args(&data, &one, 6)));
    assert!(r.status.success(), "{}", stderr(&r));

    let r = run(mpirun(2, terse, &strs(&train_args(&data, &two, 6))));
    assert!(r.status.success(), "{}", stderr(&r));
    let printed = String::from_utf8_lossy(&r.stdout);
    assert_eq!(printed.matches("trained 6/6 steps").count(), 1, "{printed}");
    assert!(stderr(&r).contains("2 ranks"), "{}", stderr(&r));
    assert_eq!(checkpoint_bits(&one), checkpoint_bits(&two));
    assert_eq!(metrics(&one), metrics(&two));
    // Four ranks, one sequence each.
    let four = dir.path().join("four");
    let r = run(mpirun(4, terse, &strs(&train_args(&data, &four, 6))));
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(checkpoint_bits(&one), checkpoint_bits(&four));

    // Two ranks to step 3, then one process to step 6.
    let mut first = train_args(&data, &split, 6);
    first.extend(["--stop-after".into(), "3".into()]);
    let r = run(mpirun(2, terse, &strs(&first)));
    assert!(r.status.success(), "{}", stderr(&r));
    let s = split.display().to_string();
    let r = common::terse(&["train", "--resume", &s, "--quiet"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(checkpoint_bits(&one), checkpoint_bits(&split));
    assert_eq!(metrics(&one), metrics(&split));
}

/// MPICH's ABI (integer handles, `libmpich.so.12`) under its own launcher, Hydra's
/// `mpiexec.mpich`: two ranks give one process's bits; and a library that is not the
/// launcher's MPI is refused. Skipped where MPICH is not installed
/// (`.ci/run` installs Debian's `mpich` beside Open MPI).
#[test]
fn two_ranks_under_mpich_train_the_bits_of_one_process() {
    let Some((dir, data)) = setup(20_000) else {
        return;
    };
    let found = Command::new("mpiexec.mpich")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED (no mpiexec.mpich: install MPICH, Debian's mpich)");
        return;
    }
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let r = common::terse(&strs(&train_args(&data, &one, 4)));
    assert!(r.status.success(), "{}", stderr(&r));
    let r = Command::new("mpiexec.mpich")
        .args(["-n", "2", env!("CARGO_BIN_EXE_terse")])
        .args(train_args(&data, &two, 4))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("2 ranks"), "{}", stderr(&r));
    assert_eq!(checkpoint_bits(&one), checkpoint_bits(&two));
    assert_eq!(metrics(&one), metrics(&two));

    // A process that Open MPI's launcher seems to have started (its variable set by hand) but
    // that opens MPICH would run alone, as one of two; it is refused before writing anything.
    let alone = dir.path().join("alone");
    let r = Command::new(env!("CARGO_BIN_EXE_terse"))
        .args(train_args(&data, &alone, 4))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("TERSE_MPI_LIBRARY", "libmpich.so.12")
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains(
            "the launcher started 2 processes, but the MPI library libmpich.so.12 counts 1"
        ),
        "{}",
        stderr(&r)
    );
    assert!(!alone.exists(), "a refused run wrote {}", alone.display());
}

#[test]
fn ranks_started_with_other_flags_all_refuse_and_write_nothing() {
    let Some((dir, data)) = setup(20_000) else {
        return;
    };
    let out = dir.path().join("run");
    // Rank 1 asks for another learning rate than rank 0.
    let script = format!(
        "exec {} \"$@\" --lr 1e-3$OMPI_COMM_WORLD_RANK",
        env!("CARGO_BIN_EXE_terse")
    );
    let mut args = vec!["-c".to_string(), script, "sh".into()];
    args.extend(
        train_args(&data, &out, 4)
            .into_iter()
            .filter(|a| a != "3e-3" && a != "--lr"),
    );
    let r = run(mpirun(2, "sh", &strs(&args)));
    assert_every_rank_says(&r, "rank 1 of 2 was started with other flags than rank 0");
    assert!(!out.exists(), "a refused run wrote {}", out.display());

    // Three sequences cannot be shared by two ranks.
    let mut odd = train_args(&data, &out, 4);
    let b = odd.iter().position(|a| a == "--batch").unwrap();
    odd[b + 1] = "3".into();
    let r = run(mpirun(2, env!("CARGO_BIN_EXE_terse"), &strs(&odd)));
    assert_every_rank_says(&r, "2 ranks cannot share a batch of 3 sequences");
    assert!(!out.exists(), "a refused run wrote {}", out.display());
}

#[test]
fn a_missing_mpi_library_is_one_clear_message() {
    let Some((dir, data)) = setup(20_000) else {
        return;
    };
    let out = dir.path().join("run");
    let mut c = mpirun(
        2,
        env!("CARGO_BIN_EXE_terse"),
        &strs(&train_args(&data, &out, 4)),
    );
    // Ranks on this machine inherit mpirun's environment.
    c.env("TERSE_MPI_LIBRARY", dir.path().join("libmpi.so.40"));
    let r = run(c);
    assert!(!r.status.success());
    let err = stderr(&r);
    assert!(
        err.contains("cannot open an MPI library") && err.contains("TERSE_MPI_LIBRARY"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_rank_that_dies_leaves_the_last_whole_checkpoint() {
    let Some((dir, data)) = setup(20_000) else {
        return;
    };
    let out = dir.path().join("run");
    let mut args = train_args(&data, &out, 100_000);
    args.extend(["--ckpt-every".into(), "2".into()]);
    let mut job = mpirun(2, env!("CARGO_BIN_EXE_terse"), &strs(&args))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a checkpoint, then kill rank 1 while the run goes on.
    let t0 = std::time::Instant::now();
    while !out.join("trainer.json").exists() {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let rank1 = rank_pid(&out, 1).expect("rank 1's process");
    Command::new("kill")
        .args(["-9", &rank1.to_string()])
        .status()
        .unwrap();
    let status = job.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "the job survived a dead rank: {err}");
    // What is on disk is a whole checkpoint that resumes.
    let (_, _, st) = load_training(&out).unwrap();
    assert!(st.state["step"].as_u64().unwrap() >= 2);
}

/// The pid of the `terse train` rank `rank` writing to `out`, from `/proc`.
fn rank_pid(out: &Path, rank: usize) -> Option<u32> {
    let want_rank = format!("OMPI_COMM_WORLD_RANK={rank}");
    let want_out = out.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        let has = |hay: &[u8], needle: &str| hay.split(|&b| b == 0).any(|p| p == needle.as_bytes());
        (has(&cmdline, &want_out) && has(&environ, &want_rank)).then_some(pid)
    })
}

#[test]
fn two_ranks_tokenize_the_single_process_dataset() {
    let Some((dir, corpus)) = setup(40_000) else {
        return;
    };
    let small = dir.path().join("small.txt");
    std::fs::write(&small, &std::fs::read(&corpus).unwrap()[..6000]).unwrap();
    let m1 = dir.path().join("m1");
    common::train_tiny(&corpus, &m1, &["--steps", "1"]);
    let m1 = m1.display().to_string();
    let cases: [(&Path, &str, &str, &[&str]); 2] = [
        (&corpus, "gzip", "4096", &[]),
        (&small, "equal-info", "1000", &["--m1", &m1]),
    ];
    for (data, method, chunk, extra) in cases {
        let (one, two) = (
            dir.path().join(format!("{method}-1")),
            dir.path().join(format!("{method}-2")),
        );
        common::tokenize(data, &one, method, "16", chunk, extra);
        let mut args: Vec<String> = ["tokenize", "--method", method, "--chunk-bytes", chunk]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--data".into(), data.display().to_string()]);
        args.extend(["--out".into(), two.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let r = run(mpirun(2, env!("CARGO_BIN_EXE_terse"), &strs(&args)));
        assert!(r.status.success(), "{method}: {}", stderr(&r));
        for f in ["tokens.bin", "metadata.json"] {
            assert!(
                std::fs::read(one.join(f)).unwrap() == std::fs::read(two.join(f)).unwrap(),
                "{method}: {f} differs"
            );
        }
        // The ranks' shard directories are gone.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".rank-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    // A rank that cannot code its shard fails every rank and leaves no dataset.
    let out = dir.path().join("refused");
    let r = run(mpirun(
        2,
        env!("CARGO_BIN_EXE_terse"),
        &[
            "tokenize",
            "--method",
            "ac",
            "--data",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert_every_rank_says(&r, "--method ac needs --m1");
    assert!(!out.exists());
}

#[test]
fn two_ranks_share_a_file_list_and_code_what_one_process_codes() {
    let Some((dir, corpus)) = setup(20_000) else {
        return;
    };
    let m1 = dir.path().join("m1");
    common::train_tiny(&corpus, &m1, &["--steps", "1"]);
    let text = std::fs::read(&corpus).unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    for d in [&one, &two] {
        std::fs::create_dir(d).unwrap();
        for i in 1..=3 {
            std::fs::write(d.join(format!("f{i}")), &text[..700 * i]).unwrap();
        }
    }
    let list = |d: &Path, suffix: &str| {
        let l = d.join("list");
        let names: String = (1..=3)
            .map(|i| format!("{}/f{i}{suffix}\n", d.display()))
            .collect();
        std::fs::write(&l, names).unwrap();
        l.display().to_string()
    };
    let m = m1.display().to_string();
    let r = common::terse(&["compress", "--m1", &m, "-k", "--filelist", &list(&one, "")]);
    assert!(r.status.success(), "{}", stderr(&r));
    let terse = env!("CARGO_BIN_EXE_terse");
    let r = run(mpirun(
        2,
        terse,
        &["compress", "--m1", &m, "-k", "--filelist", &list(&two, "")],
    ));
    assert!(r.status.success(), "{}", stderr(&r));
    for i in 1..=3 {
        let name = format!("f{i}.terse");
        assert!(
            std::fs::read(one.join(&name)).unwrap() == std::fs::read(two.join(&name)).unwrap(),
            "{name} differs"
        );
        std::fs::remove_file(two.join(format!("f{i}"))).unwrap();
    }
    let r = run(mpirun(
        2,
        terse,
        &[
            "decompress",
            "--m1",
            &m,
            "--filelist",
            &list(&two, ".terse"),
        ],
    ));
    assert!(r.status.success(), "{}", stderr(&r));
    for i in 1..=3 {
        assert_eq!(
            std::fs::read(two.join(format!("f{i}"))).unwrap(),
            &text[..700 * i]
        );
    }
    // One file under mpirun would be coded by every rank at once: refused on each.
    let f1 = one.join("f1").display().to_string();
    let r = run(mpirun(2, terse, &["compress", "--m1", &m, "-c", &f1]));
    assert_every_rank_says(&r, "under mpirun, name the files with --filelist");
}

/// The libraries of the CUDA emulator (`emu/`), built once (for every test of this file) into
/// the test's scratch directory; `None`, saying why, where it cannot run here.
fn emulator_libraries() -> Option<std::path::PathBuf> {
    static BUILT: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_emulator).clone()
}

/// `LD_LIBRARY_PATH` with `libs` (the emulator's) in front.
fn library_path_with(libs: &Path) -> String {
    match std::env::var("LD_LIBRARY_PATH") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", libs.display()),
        _ => libs.display().to_string(),
    }
}

fn build_emulator() -> Option<std::path::PathBuf> {
    use terse::backend::cuda;
    let skip = |why: &str| {
        eprintln!("SKIPPED (the emulated GPU: {why})");
        None
    };
    if cuda::embedded_kernels().is_empty() {
        return skip("this build has no kernels: build with NVCC set");
    }
    if cfg!(not(target_arch = "x86_64")) {
        return skip("the emulator runs on x86-64 only");
    }
    let libs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu-mpi");
    let built = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/emu/build.py"))
        .arg(&libs)
        .output();
    match built {
        Ok(o) if o.status.success() => Some(libs),
        Ok(o) => panic!(
            "emu/build.py failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => skip("python3 not found"),
    }
}

/// The CUDA backend shares a batch on the emulated GPU both ways: by the emulator's NCCL, in
/// many small buckets started during the backward, and through the host where NCCL is turned
/// off; and with gradient accumulation. Each two-rank update matches one GPU process's within
/// bf16 rounding (GPU steps are not bit-exact across shapes), where a rank that skipped the
/// sum, or a bucket summed before the backward wrote it, would be off by a large part.
#[test]
fn two_ranks_on_the_emulated_gpu_update_as_one_process() {
    let Some((dir, data)) = setup(20_000) else {
        return;
    };
    let Some(libs) = emulator_libraries() else {
        return;
    };
    let with_gpu = |out: &Path| {
        let mut a = train_args(&data, out, 2);
        a.extend(["--device".into(), "cuda".into()]);
        a
    };
    let path = library_path_with(&libs);
    let one = dir.path().join("one");
    let mut single = Command::new(env!("CARGO_BIN_EXE_terse"));
    single.args(with_gpu(&one)).env("LD_LIBRARY_PATH", &path);
    let r = run(single);
    assert!(r.status.success(), "{}", stderr(&r));
    let (cfg, w1) = load_model(&one).unwrap();
    let w0 = terse::model::ParamArena::init(&cfg, 0);
    // The same global batch of 4 in one pass per rank, or as --batch 2 --accum 2 (each rank's
    // share in two passes, NCCL's sum after the second).
    for (mode, accum, says) in [
        ("nccl", false, "all-reduced over 2 ranks by NCCL"),
        ("host", false, "summed over 2 ranks through the host"),
        ("nccl", true, "share in 2 accumulated passes"),
    ] {
        let two = dir.path().join(format!("{mode}-{accum}"));
        let mut args = with_gpu(&two);
        if accum {
            let b = args.iter().position(|a| a == "--batch").unwrap();
            args[b + 1] = "2".into();
            args.extend(["--accum".into(), "2".into()]);
        }
        let mut shared = mpirun(2, env!("CARGO_BIN_EXE_terse"), &strs(&args));
        shared
            .env("LD_LIBRARY_PATH", &path)
            .env("TERSE_CUDA_ALLREDUCE", mode)
            .env("TERSE_CUDA_BUCKET_KIB", "1");
        let r = run(shared);
        assert!(r.status.success(), "{mode}: {}", stderr(&r));
        assert!(stderr(&r).contains(says), "{mode}: {}", stderr(&r));
        let (_, w2) = load_model(&two).unwrap();
        let (mut diff, mut step) = (0f64, 0f64);
        for ((a, b), z) in w1.data.iter().zip(&w2.data).zip(&w0.data) {
            diff += ((a - b) as f64).powi(2);
            step += ((a - z) as f64).powi(2);
        }
        let rel = (diff / step).sqrt();
        assert!(
            step > 0.0 && rel < 0.01,
            "{mode}: the two-rank update differs by {rel:.4} of its size"
        );
    }
}

/// The emulator's NCCL (`emu/nccl.cpp`) sums its ranks' buffers in rank order, and catches the
/// bug a GPU would hang or corrupt memory on: ranks whose calls of the same number reduce
/// different counts. Two threads stand for two ranks (device memory is host memory there).
#[test]
fn the_emulated_nccl_sums_and_refuses_ranks_that_disagree() {
    use std::ffi::{c_int, c_void, CStr};
    let Some(libs) = emulator_libraries() else {
        return;
    };
    type Comm = *mut c_void;
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Id([u8; 128]);
    type AllReduce = unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        Comm,
        *mut c_void,
    ) -> c_int;
    // SAFETY: the emulator's library, its functions named with nccl.h's signatures.
    let lib = unsafe { libloading::Library::new(libs.join("libnccl.so.2")) }.unwrap();
    let get_id = unsafe {
        *lib.get::<unsafe extern "C" fn(*mut Id) -> c_int>(b"ncclGetUniqueId")
            .unwrap()
    };
    let init = unsafe {
        *lib.get::<unsafe extern "C" fn(*mut Comm, c_int, Id, c_int) -> c_int>(b"ncclCommInitRank")
            .unwrap()
    };
    let all_reduce = unsafe { *lib.get::<AllReduce>(b"ncclAllReduce").unwrap() };
    let last_error = unsafe {
        *lib.get::<unsafe extern "C" fn(Comm) -> *const std::ffi::c_char>(b"ncclGetLastError")
            .unwrap()
    };
    let destroy = unsafe {
        *lib.get::<unsafe extern "C" fn(Comm) -> c_int>(b"ncclCommDestroy")
            .unwrap()
    };
    let mut id = Id([0; 128]);
    assert_eq!(unsafe { get_id(&mut id) }, 0);
    let dir = String::from_utf8_lossy(&id.0)
        .trim_end_matches('\0')
        .to_string();
    // Each rank: a correct sum of 3 values, then a call whose count is rank-dependent.
    let rank = |r: c_int| {
        move || -> (Vec<f32>, c_int, String) {
            let mut comm: Comm = std::ptr::null_mut();
            assert_eq!(unsafe { init(&mut comm, 2, id, r) }, 0);
            let mut buf = vec![1.0 + r as f32, 10.0 * (r + 1) as f32, -0.5];
            let p = buf.as_mut_ptr() as *mut c_void;
            assert_eq!(
                unsafe { all_reduce(p, p, 3, 7, 0, comm, std::ptr::null_mut()) },
                0
            );
            let mut bad = vec![0f32; 4 + r as usize];
            let q = bad.as_mut_ptr() as *mut c_void;
            let code = unsafe { all_reduce(q, q, bad.len(), 7, 0, comm, std::ptr::null_mut()) };
            let why = unsafe { CStr::from_ptr(last_error(comm)) }
                .to_string_lossy()
                .into_owned();
            assert_eq!(unsafe { destroy(comm) }, 0);
            (buf, code, why)
        }
    };
    let other = std::thread::spawn(rank(1));
    let (sum0, code0, why0) = rank(0)();
    let (sum1, code1, why1) = other.join().unwrap();
    assert_eq!(sum0, vec![3.0, 30.0, -1.0]);
    assert_eq!(sum1, sum0);
    const INVALID_USAGE: c_int = 5;
    assert_eq!((code0, code1), (INVALID_USAGE, INVALID_USAGE));
    assert!(
        why0.contains("sums 4 elements") && why0.contains("5 elements of 4 bytes on rank 1"),
        "{why0}"
    );
    assert!(why1.contains("sums 5 elements"), "{why1}");
    assert!(!Path::new(&dir).exists(), "the ranks left {dir} behind");
}

/// On the emulated GPU, a run asked for NCCL where it cannot be opened, and a run whose rank 1
/// alone lacks NCCL (its sums would never meet rank 0's), each stop with one clear message on
/// every rank and no checkpoint.
#[test]
fn ranks_without_nccl_all_refuse_and_write_nothing() {
    let Some((dir, data)) = setup(20_000) else {
        return;
    };
    let Some(libs) = emulator_libraries() else {
        return;
    };
    let out = dir.path().join("run");
    let mut args = train_args(&data, &out, 2);
    args.extend(["--device".into(), "cuda".into()]);
    let path = library_path_with(&libs);
    let missing = dir.path().join("libnccl.so.2").display().to_string();
    let mut c = mpirun(2, env!("CARGO_BIN_EXE_terse"), &strs(&args));
    c.env("LD_LIBRARY_PATH", &path)
        .env("TERSE_CUDA_ALLREDUCE", "nccl")
        .env("TERSE_NCCL_LIBRARY", &missing);
    let r = run(c);
    assert_every_rank_says(
        &r,
        "TERSE_CUDA_ALLREDUCE=nccl, but cannot open NCCL's library",
    );
    assert!(!out.exists(), "a refused run wrote {}", out.display());

    let script = format!(
        "[ \"$OMPI_COMM_WORLD_RANK\" = 1 ] && export TERSE_NCCL_LIBRARY={missing}; exec {} \"$@\"",
        env!("CARGO_BIN_EXE_terse")
    );
    let mut sh = vec!["-c".to_string(), script, "sh".into()];
    sh.extend(args);
    let mut c = mpirun(2, "sh", &strs(&sh));
    c.env("LD_LIBRARY_PATH", &path);
    let r = run(c);
    assert_every_rank_says(&r, "rank 0 can open NCCL and rank 1 cannot");
    assert!(!out.exists(), "a refused run wrote {}", out.display());
}
