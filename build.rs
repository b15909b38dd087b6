//! Compiles every `kernels/*.cu` with nvcc into a cubin (sm_90a) and portable PTX (compute_80), and
//! writes `$OUT_DIR/kernels.rs` embedding them for `src/backend/cuda`.
//!
//! nvcc is looked for in order: `$NVCC`, `$CUDA_HOME/bin/nvcc`, `nvcc` on `PATH`, the PyPI layout
//! `<site-packages>/nvidia/cu13/bin/nvcc` (see `scripts/install-nvcc.sh`), `/usr/local/cuda/bin/nvcc`.
//! - No nvcc: a warning, and an empty kernel table (the crate still builds; CPU backend only).
//! - `TERSE_REQUIRE_KERNELS=1` and no nvcc: the build fails (CI sets it).
//! - nvcc found and a kernel fails to compile: the build fails with nvcc's stderr, always.
//!
//! A kernel whose first line is `// terse: exact` compiles with `-fmad=false` and IEEE division and
//! square root (the M1 coding path's numeric contract); every other kernel gets `--use_fast_math`.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const CUBIN_ARCH: &str = "-gencode=arch=compute_90a,code=sm_90a";
const PTX_ARCH: &str = "-gencode=arch=compute_80,code=compute_80";
const EXACT_MARKER: &str = "// terse: exact";

struct Nvcc {
    path: PathBuf,
    version: String,
    /// `-I`/`-isystem` flags for toolkits (the PyPI one) whose headers nvcc does not find itself,
    /// and `-ccbin` when no `gcc` is on PATH.
    include_flags: Vec<String>,
}

struct Kernel {
    name: String,
    source: PathBuf,
    exact: bool,
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let kernel_dir = manifest_dir.join("kernels");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", kernel_dir.display());
    for var in [
        "NVCC",
        "CUDA_HOME",
        "TERSE_REQUIRE_KERNELS",
        "PATH",
        "NVCC_CCBIN",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let require = env::var("TERSE_REQUIRE_KERNELS")
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false);

    let kernels = list_kernels(&kernel_dir);
    for k in &kernels {
        println!("cargo:rerun-if-changed={}", k.source.display());
    }
    // Headers shared between kernels also trigger a rebuild.
    if let Ok(entries) = fs::read_dir(&kernel_dir) {
        for e in entries.flatten() {
            let p = e.path();
            if matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("cuh") | Some("h")
            ) {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }

    let (nvcc, tried) = find_nvcc();
    let Some(nvcc) = nvcc else {
        let msg = format!(
            "nvcc not found; building the CPU backend only (tried: {}; run scripts/install-nvcc.sh \
             or set NVCC)",
            tried.join(", ")
        );
        if require {
            panic!("TERSE_REQUIRE_KERNELS is set but {msg}");
        }
        println!("cargo:warning={msg}");
        write_table(&out_dir, &[], "");
        return;
    };

    let mut failures = Vec::new();
    // Each kernel is two independent nvcc runs; run them on as many threads as cargo allows.
    let jobs: Vec<(usize, bool)> = (0..kernels.len())
        .flat_map(|i| [(i, true), (i, false)])
        .collect();
    let threads = env::var("NUM_JOBS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(2)
        .clamp(1, jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(i, cubin)) = jobs.get(j) else {
                    break;
                };
                let r = compile(&nvcc, &kernels[i], &kernel_dir, &out_dir, cubin);
                results.lock().unwrap().push(r);
            });
        }
    });
    for r in results.into_inner().unwrap() {
        if let Err(e) = r {
            failures.push(e);
        }
    }
    failures.sort();
    if !failures.is_empty() {
        panic!(
            "nvcc ({}) failed to compile {} kernel target(s):\n\n{}",
            nvcc.path.display(),
            failures.len(),
            failures.join("\n\n")
        );
    }
    write_table(&out_dir, &kernels, &nvcc.version);
}

/// `kernels/*.cu`, sorted by name; a name must be a valid identifier-like stem.
fn list_kernels(dir: &Path) -> Vec<Kernel> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("cu") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "kernel file name must be [A-Za-z0-9_]+.cu: {}",
            path.display()
        );
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let exact = text
            .lines()
            .next()
            .map(|l| l.trim() == EXACT_MARKER)
            .unwrap_or(false);
        out.push(Kernel {
            name,
            source: path,
            exact,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn compile(
    nvcc: &Nvcc,
    k: &Kernel,
    kernel_dir: &Path,
    out_dir: &Path,
    cubin: bool,
) -> Result<(), String> {
    let (arch, kind, ext) = if cubin {
        (CUBIN_ARCH, "-cubin", "cubin")
    } else {
        (PTX_ARCH, "-ptx", "ptx")
    };
    let output = out_dir.join(format!("{}.{ext}", k.name));
    let mut cmd = Command::new(&nvcc.path);
    cmd.arg(arch).arg(kind).args(["-O3", "-std=c++17"]);
    if k.exact {
        cmd.args([
            "-fmad=false",
            "-prec-div=true",
            "-prec-sqrt=true",
            "-ftz=false",
        ]);
    } else {
        cmd.arg("--use_fast_math");
    }
    cmd.arg(format!("-I{}", kernel_dir.display()))
        .args(&nvcc.include_flags)
        .arg("-o")
        .arg(&output)
        .arg(&k.source);
    let shown = format!("{cmd:?}");
    match cmd.output() {
        Ok(o) if o.status.success() => {
            let len = fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
            if len == 0 {
                return Err(format!(
                    "{shown}\nproduced no output at {}",
                    output.display()
                ));
            }
            Ok(())
        }
        Ok(o) => Err(format!(
            "{shown}\n{}\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("{shown}\ncould not run: {e}")),
    }
}

fn write_table(out_dir: &Path, kernels: &[Kernel], version: &str) {
    let mut s = String::from("// @generated by build.rs: kernels compiled from kernels/*.cu\n\n");
    writeln!(
        s,
        "/// Version of the nvcc that compiled the embedded kernels; empty if none."
    )
    .unwrap();
    writeln!(s, "pub const NVCC_VERSION: &str = {version:?};").unwrap();
    writeln!(s, "/// One entry per `kernels/*.cu`, sorted by name; empty when built without nvcc. Prefer\n/// `embedded_kernels()`.").unwrap();
    writeln!(s, "pub static KERNELS: &[EmbeddedKernel] = &[").unwrap();
    for k in kernels {
        writeln!(
            s,
            "    EmbeddedKernel {{ name: {name:?}, \
             cubin: include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{name}.cubin\")), \
             ptx: include_str!(concat!(env!(\"OUT_DIR\"), \"/{name}.ptx\")) }},",
            name = k.name
        )
        .unwrap();
    }
    writeln!(s, "];").unwrap();
    let path = out_dir.join("kernels.rs");
    // Rewrite only on change, so an unchanged table does not force recompiling the crate.
    if fs::read_to_string(&path).ok().as_deref() != Some(s.as_str()) {
        fs::write(&path, s).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// The first candidate that runs `--version` successfully, plus the list of what was tried.
fn find_nvcc() -> (Option<Nvcc>, Vec<String>) {
    // (path, how to name it in the "tried" list)
    let mut candidates: Vec<(PathBuf, String)> = Vec::new();
    let explicit = env::var_os("NVCC")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if let Some(p) = &explicit {
        candidates.push((p.clone(), format!("NVCC={}", p.display())));
    }
    if let Some(h) = env::var_os("CUDA_HOME").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(h).join("bin").join("nvcc");
        candidates.push((p.clone(), p.display().to_string()));
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            candidates.push((dir.join("nvcc"), "nvcc on PATH".to_string()));
        }
    }
    for sp in python_site_packages() {
        let p = sp.join("nvidia").join("cu13").join("bin").join("nvcc");
        candidates.push((p.clone(), p.display().to_string()));
    }
    let p = PathBuf::from("/usr/local/cuda/bin/nvcc");
    candidates.push((p.clone(), p.display().to_string()));

    let mut tried: Vec<String> = Vec::new();
    for (c, label) in candidates {
        if !tried.contains(&label) {
            tried.push(label);
        }
        if !c.is_file() {
            if explicit.as_ref() == Some(&c) {
                println!(
                    "cargo:warning=NVCC={} is not a file; looking elsewhere",
                    c.display()
                );
            }
            continue;
        }
        match Command::new(&c).arg("--version").output() {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout).to_string();
                return (
                    Some(Nvcc {
                        version: parse_version(&text),
                        include_flags: include_flags(&c)
                            .into_iter()
                            .chain(host_compiler())
                            .collect(),
                        path: c,
                    }),
                    tried,
                );
            }
            Ok(o) => println!(
                "cargo:warning={} --version failed ({}); looking elsewhere",
                c.display(),
                o.status
            ),
            Err(e) => println!(
                "cargo:warning={} could not run ({e}); looking elsewhere",
                c.display()
            ),
        }
    }
    (None, tried)
}

/// `site.getsitepackages()` and `site.getusersitepackages()` from `python3`, if it runs.
fn python_site_packages() -> Vec<PathBuf> {
    let script = "import site\n\
                  ds = []\n\
                  try: ds += site.getsitepackages()\n\
                  except Exception: pass\n\
                  try: ds.append(site.getusersitepackages())\n\
                  except Exception: pass\n\
                  print('\\n'.join(ds))";
    for py in ["python3", "python"] {
        if let Ok(o) = Command::new(py).arg("-c").arg(script).output() {
            if o.status.success() {
                return String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| PathBuf::from(l.trim()))
                    .collect();
            }
        }
    }
    Vec::new()
}

/// "Cuda compilation tools, release 13.0, V13.0.88" -> "13.0.88"; else the last non-empty line.
fn parse_version(text: &str) -> String {
    for line in text.lines() {
        if let Some(pos) = line.find(", V") {
            return line[pos + 3..].trim().to_string();
        }
    }
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("unknown")
        .trim()
        .to_string()
}

/// For `<root>/bin/nvcc`: `-I<root>/include` and `-isystem <root>/include/cccl` where they exist.
/// A system toolkit finds these itself; the PyPI layout's nvcc.profile points at a `targets/`
/// folder the wheels do not have, so passing them keeps it working whatever that profile says.
fn include_flags(nvcc: &Path) -> Vec<String> {
    let mut flags = Vec::new();
    if let Some(root) = nvcc.parent().and_then(|bin| bin.parent()) {
        let inc = root.join("include");
        if inc.join("cuda_runtime.h").is_file() {
            flags.push(format!("-I{}", inc.display()));
        }
        let cccl = inc.join("cccl");
        if cccl.is_dir() {
            flags.push("-isystem".to_string());
            flags.push(cccl.display().to_string());
        }
    }
    flags
}

/// `-ccbin <gcc>` only when nvcc would not find a host compiler itself: `NVCC_CCBIN` unset and no
/// `gcc` on PATH, but one in /usr/bin (newest supported by CUDA 13.0 first).
fn host_compiler() -> Vec<String> {
    if env::var_os("NVCC_CCBIN").is_some() {
        return Vec::new();
    }
    let on_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join("gcc").is_file()))
        .unwrap_or(false);
    if on_path {
        return Vec::new();
    }
    for cand in [
        "/usr/bin/gcc-14",
        "/usr/bin/gcc-13",
        "/usr/bin/gcc-12",
        "/usr/bin/gcc",
    ] {
        if Path::new(cand).is_file() {
            return vec!["-ccbin".to_string(), cand.to_string()];
        }
    }
    Vec::new()
}
