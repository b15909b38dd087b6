//! Compiles every `kernels/*.cu` with nvcc into a cubin (sm_90a) and portable PTX (compute_80), and
//! writes `$OUT_DIR/kernels.rs` embedding them for `src/backend/cuda`.
//!
//! Also writes `$OUT_DIR/kernel_entries.rs`, the one list of kernel entry points (the `Entry` enum
//! of `src/backend/cuda`), read from the sources whether or not nvcc is found; where nvcc runs,
//! the list must match the entry points of the compiled PTX, or the build fails.
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
    text: String,
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

    // The entry points come from the sources, so the list exists with or without nvcc.
    let entries: Vec<Vec<String>> = kernels.iter().map(|k| scan_entries(&k.text)).collect();
    write_entries(&out_dir, &kernels, &entries);

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
    check_entries_against_ptx(&out_dir, &kernels, &entries);
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
            text,
            exact,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The `extern "C" __global__` entry points of one kernel source, in source order.
///
/// Reads the source, not the preprocessor's output (nvcc may be absent): lines are spliced and
/// comments dropped as C does, an entry is the name before the first `(` after
/// `extern "C" __global__` (past `void` and `__launch_bounds__(..)`), and an entry written inside
/// a function-like `#define` counts once per use of that macro, with its arguments pasted in
/// (`attention_forward_##SUFFIX` under `ATTN_ENTRIES(bf16, bf16)` is `attention_forward_bf16`).
/// `#if` is not evaluated. Where nvcc runs, [`check_entries_against_ptx`] compares the result with
/// the compiled PTX, so a form this reading gets wrong fails the build instead of going unseen.
fn scan_entries(source: &str) -> Vec<String> {
    let text = strip_comments(&source.replace("\\\r\n", " ").replace("\\\n", " "));
    // (macro name, parameters, entry names as written in its body)
    let mut macros: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    // The source without its preprocessor lines (kept as blank lines, so offsets stay in order).
    let mut code = String::with_capacity(text.len());
    for line in text.lines() {
        let directive = line.trim_start().strip_prefix('#').map(str::trim_start);
        if let Some(def) = directive.and_then(|d| d.strip_prefix("define")) {
            let def = def.trim_start();
            let name_len = def.find(|c: char| !is_ident_char(c)).unwrap_or(def.len());
            let (name, rest) = def.split_at(name_len);
            // Function-like only: the `(` follows the name directly.
            if let Some((params, body)) = rest.strip_prefix('(').and_then(|r| r.split_once(')')) {
                let templates: Vec<String> =
                    entry_names(body).into_iter().map(|(_, n)| n).collect();
                if !templates.is_empty() {
                    let params = params.split(',').map(|p| p.trim().to_string()).collect();
                    macros.push((name.to_string(), params, templates));
                }
            }
        }
        if directive.is_none() {
            code.push_str(line);
        }
        code.push('\n');
    }
    let mut found = entry_names(&code);
    for (name, params, templates) in &macros {
        for (at, args) in macro_uses(&code, name) {
            assert_eq!(
                args.len(),
                params.len(),
                "{name}(..) is used with {} arguments, defined with {}",
                args.len(),
                params.len()
            );
            for t in templates {
                let pasted: String = t
                    .split("##")
                    .map(|piece| {
                        let piece = piece.trim();
                        params
                            .iter()
                            .position(|p| p == piece)
                            .map_or(piece, |i| args[i].as_str())
                    })
                    .collect();
                found.push((at, pasted));
            }
        }
    }
    found.sort_by_key(|&(at, _)| at);
    found.into_iter().map(|(_, n)| n).collect()
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The source with `//` and `/* */` comments replaced by a space (a block comment keeps its line
/// breaks); string and character literals are skipped over, not searched.
fn strip_comments(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                out.push(b' ');
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    if b[i] == b'\n' {
                        out.push(b'\n');
                    }
                    i += 1;
                }
                i += 2;
                out.push(b' ');
            }
            q @ (b'"' | b'\'') => {
                out.push(q);
                i += 1;
                while i < b.len() && b[i] != q && b[i] != b'\n' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        out.push(b[i]);
                        i += 1;
                    }
                    out.push(b[i]);
                    i += 1;
                }
                if i < b.len() && b[i] == q {
                    out.push(q);
                    i += 1;
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("comments removed at ASCII boundaries")
}

/// `(offset, name)` of each `extern "C" __global__ ... name(` in `code`; a name may hold `##`
/// (inside a macro body). Panics on an `extern "C" __global__` it cannot read a name from.
fn entry_names(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("extern") {
        let at = from + i;
        from = at + "extern".len();
        if code[..at].chars().next_back().is_some_and(is_ident_char) {
            continue;
        }
        let Some(rest) = code[from..].trim_start().strip_prefix("\"C\"") else {
            continue;
        };
        let Some(mut rest) = rest.trim_start().strip_prefix("__global__") else {
            continue;
        };
        loop {
            rest = rest.trim_start();
            let len = rest
                .find(|c: char| !is_ident_char(c) && c != '#')
                .unwrap_or(rest.len());
            let (word, after) = rest.split_at(len);
            assert!(
                !word.is_empty(),
                "cannot read the kernel name of `{}`",
                code[at..].lines().next().unwrap_or_default()
            );
            let after = after.trim_start();
            if word == "__launch_bounds__" {
                rest = skip_parens(after);
            } else if after.starts_with('(') {
                out.push((at, word.to_string()));
                break;
            } else {
                rest = after;
            }
        }
    }
    out
}

/// `s` past the balanced parentheses it starts with (all of it if they never close).
fn skip_parens(s: &str) -> &str {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return &s[i + 1..];
                }
            }
            _ if depth == 0 => return s,
            _ => {}
        }
    }
    ""
}

/// `(offset, arguments)` of each use `name(a, b, ..)` of a function-like macro in `code`.
fn macro_uses(code: &str, name: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        if code[..at].chars().next_back().is_some_and(is_ident_char) {
            continue;
        }
        let Some(args) = code[from..].trim_start().strip_prefix('(') else {
            continue;
        };
        let (mut depth, mut current, mut list) = (0usize, String::new(), Vec::new());
        for c in args.chars() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => break,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    list.push(current.trim().to_string());
                    current.clear();
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        list.push(current.trim().to_string());
        out.push((at, list));
    }
    out
}

/// With nvcc: every kernel's PTX `.entry` names are exactly the names [`scan_entries`] read from
/// its source (so the generated [`Entry`] list is the compiled one), else the build fails.
fn check_entries_against_ptx(out_dir: &Path, kernels: &[Kernel], entries: &[Vec<String>]) {
    for (k, scanned) in kernels.iter().zip(entries) {
        let path = out_dir.join(format!("{}.ptx", k.name));
        let ptx =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut compiled: Vec<String> = ptx
            .lines()
            .filter_map(|l| l.split_once(".entry ").map(|(_, rest)| rest))
            .map(|rest| rest.chars().take_while(|&c| is_ident_char(c)).collect())
            .collect();
        let mut read = scanned.clone();
        compiled.sort();
        read.sort();
        assert!(
            compiled == read,
            "kernels/{}.cu: build.rs read the entry points {read:?} from the source, but nvcc \
             compiled {compiled:?}; write each entry as `extern \"C\" __global__ void name(..)` \
             (or teach scan_entries in build.rs the new form)",
            k.name
        );
    }
}

/// `$OUT_DIR/kernel_entries.rs`: the `Entry` enum, one variant per entry point of every
/// `kernels/*.cu`, named exactly as the kernel (the `extern "C"` symbol), by file then source
/// order, with its symbol name and file.
fn write_entries(out_dir: &Path, kernels: &[Kernel], entries: &[Vec<String>]) {
    // (file stem, entry name)
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (k, names) in kernels.iter().zip(entries) {
        for n in names {
            if let Some((other, _)) = seen.iter().find(|(_, s)| s == n) {
                panic!(
                    "kernel entry {n} is defined in kernels/{other}.cu and kernels/{}.cu",
                    k.name
                );
            }
            seen.push((k.name.as_str(), n.as_str()));
        }
    }
    let mut s = String::from(
        "// @generated by build.rs from the `extern \"C\" __global__` entry points of kernels/*.cu\n\n",
    );
    s.push_str(
        "/// A kernel entry point of `kernels/*.cu`, named exactly as the kernel (its `extern \"C\"`\n\
         /// symbol in the cubin and PTX), in file order and then source order; generated by\n\
         /// `build.rs` from the sources, so a renamed or removed kernel is a compile error where it\n\
         /// is launched.\n\
         #[allow(non_camel_case_types)]\n\
         #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]\n\
         pub enum Entry {\n",
    );
    for (module, name) in &seen {
        writeln!(s, "    /// `kernels/{module}.cu`\n    {name},").unwrap();
    }
    s.push_str("}\n\nimpl Entry {\n");
    writeln!(
        s,
        "    /// Every entry point, in declaration order (`Entry::ALL[e as usize] == e`).\n    \
         pub const ALL: [Entry; {}] = [",
        seen.len()
    )
    .unwrap();
    for (_, name) in &seen {
        writeln!(s, "        Entry::{name},").unwrap();
    }
    s.push_str("    ];\n\n");
    s.push_str(
        "    /// The kernel's symbol name, as in the `.cu` source, the cubin and the PTX.\n    \
         pub const fn name(self) -> &'static str {\n        match self {\n",
    );
    for (_, name) in &seen {
        writeln!(s, "            Entry::{name} => {name:?},").unwrap();
    }
    s.push_str(
        "        }\n    }\n\n    \
         /// The stem of the `kernels/*.cu` file that defines it (an `EmbeddedKernel` name).\n    \
         pub const fn module(self) -> &'static str {\n        match self {\n",
    );
    for (module, name) in &seen {
        writeln!(s, "            Entry::{name} => {module:?},").unwrap();
    }
    s.push_str("        }\n    }\n}\n");
    let path = out_dir.join("kernel_entries.rs");
    if fs::read_to_string(&path).ok().as_deref() != Some(s.as_str()) {
        fs::write(&path, s).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
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
