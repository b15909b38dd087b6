//! `terse compress` and `terse decompress`: their flags, xz's habits (a derived output name, the
//! input removed after success unless --keep, -c, -d, -t, -f), and what they print.

use super::ranks::say_once;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use terse::compress::{compress_file, decompress_file, Coding, CompressReport, Progress, STDIO};
use terse::dist::{check_same_command, gather_u64, OnEveryRank};
use terse::fsio::{check_output, Existing};
use terse::m1::{builtin_m1, Int8M1};

/// The suffix `compress` adds and `decompress` strips.
const SUFFIX: &str = ".terse";

/// `--method`: the command line's names of [`Coding`]'s kinds.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CompressMethod {
    Ac,
    EqualInfo,
}

/// Where the bytes come from and go, shared by both commands.
#[derive(Args)]
struct Streams {
    /// Input file, or `-` for standard input (read once, front to back).
    #[arg(required_unless_present = "filelist")]
    input: Option<PathBuf>,
    /// Output file, written atomically (a symlink is followed, a device or FIFO written
    /// through), or `-` for standard output. Default: INPUT with `.terse` added (compress) or
    /// removed (decompress), and INPUT is then removed after success unless --keep.
    output: Option<PathBuf>,
    /// Write to standard output (OUTPUT `-`); the input is kept and the report goes to stderr.
    #[arg(short = 'c', long)]
    stdout: bool,
    /// Keep INPUT when the output's name is derived from it.
    #[arg(short, long)]
    keep: bool,
    /// Replace OUTPUT if it is an existing file (without this, an existing file is refused).
    #[arg(short, long)]
    force: bool,
    /// Code every file named in LIST (one path a line) instead of INPUT, each to its derived
    /// name, as xz and zstd do with several files: a file that fails is named and the others go
    /// on (exit status 1 if any failed). Under `mpirun` or `srun` the ranks share the list
    /// (file k goes to rank k mod N).
    #[arg(long, value_name = "LIST", conflicts_with_all = ["input", "output", "stdout"])]
    filelist: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Report progress on stderr as it runs, a line at most every half second even when stderr
    /// is not a terminal: bytes in and out, ratio, MB/s. (Without it, a bar shows only on a
    /// terminal, and not with --json.)
    #[arg(short, long)]
    verbose: bool,
}

impl Streams {
    fn progress(&self) -> Progress {
        match (self.verbose, self.json) {
            (true, _) => Progress::Lines,
            (false, true) => Progress::Off,
            (false, false) => Progress::Bar,
        }
    }
}

#[derive(Args)]
pub struct CompressArgs {
    /// M1: a checkpoint of a byte-level model or an M1 pack (`terse pack-m1`); decompression
    /// needs the same one. Default: the M1 built into terse (data/README.md).
    #[arg(long)]
    m1: Option<PathBuf>,
    /// How each chunk is coded: `ac` (one arithmetic code under M1 mixed with the chunk's own
    /// repeats: the best ratio) or `equal-info` (windows of --window-bits that decode on their
    /// own). A chunk that xz codes shorter is xz's; one that nothing shrinks is stored as it is.
    #[arg(long, value_enum, default_value = "ac")]
    method: CompressMethod,
    /// Bits per Equal-Info window: 16..=128, a multiple of 8 (default 16; equal-info only).
    #[arg(long)]
    window_bits: Option<u32>,
    /// Bytes per independently coded chunk (1 to 16 MiB; a damaged chunk is named). Larger
    /// chunks remember more repeats (a better ratio); smaller ones run on more cores at once.
    #[arg(long, default_value_t = terse::compress::DEFAULT_CHUNK_BYTES)]
    chunk_bytes: u32,
    /// Decompress instead (as `terse decompress`).
    #[arg(short, long)]
    decompress: bool,
    /// Check that INPUT decompresses, writing nothing (implies --decompress).
    #[arg(short, long)]
    test: bool,
    #[command(flatten)]
    io: Streams,
}

#[derive(Args)]
pub struct DecompressArgs {
    /// The M1 the file was compressed with (a checkpoint or an M1 pack). Default: the M1 built
    /// into terse.
    #[arg(long)]
    m1: Option<PathBuf>,
    /// Check that INPUT decompresses, writing nothing.
    #[arg(short, long)]
    test: bool,
    #[command(flatten)]
    io: Streams,
}

/// What is done to each input.
#[derive(Clone, Copy)]
enum Job {
    Compress { coding: Coding, chunk_bytes: u32 },
    Decompress { test: bool },
}

pub fn run_compress(a: &CompressArgs) -> Result<()> {
    if a.decompress || a.test {
        return run(Job::Decompress { test: a.test }, a.m1.as_deref(), &a.io);
    }
    let coding = match (a.method, a.window_bits) {
        (CompressMethod::Ac, None) => Coding::AC,
        (CompressMethod::Ac, Some(_)) => {
            bail!("--window-bits applies to --method equal-info, not ac")
        }
        (CompressMethod::EqualInfo, bits) => Coding::EqualInfo {
            window_bits: bits.unwrap_or(16),
        },
    };
    let job = Job::Compress {
        coding,
        chunk_bytes: a.chunk_bytes,
    };
    run(job, a.m1.as_deref(), &a.io)
}

pub fn run_decompress(a: &DecompressArgs) -> Result<()> {
    run(Job::Decompress { test: a.test }, a.m1.as_deref(), &a.io)
}

/// Does `job` to INPUT, or to every file of `--filelist` (shared between the ranks of an MPI
/// job when a launcher started this process).
fn run(job: Job, m1: Option<&Path>, io: &Streams) -> Result<()> {
    super::ranks::run_ranked(|group| {
        let Some(list) = &io.filelist else {
            if group.is_some() {
                return Err(OnEveryRank(
                    "under mpirun, name the files with --filelist: each rank then codes its share of them".into(),
                )
                .into());
            }
            let input = io
                .input
                .as_deref()
                .expect("clap requires INPUT without --filelist");
            return one_file(job, &load_m1(m1)?, m1.is_some(), io, input);
        };
        let (rank, size) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.size()));
        if let Some(g) = &group {
            check_same_command(g.as_ref())?;
        }
        let files = read_filelist(list)?;
        let m = load_m1(m1)?;
        let mut failed = 0u64;
        for file in files.iter().skip(rank).step_by(size) {
            if let Err(e) = one_file(job, &m, m1.is_some(), io, file) {
                say_once(&format!("error: {}: {e:#}\n", file.display()));
                failed += 1;
            }
        }
        let failed: u64 = match &group {
            Some(g) => gather_u64(g.as_ref(), failed)?.iter().sum(),
            None => failed,
        };
        if failed > 0 {
            return Err(OnEveryRank(format!(
                "{failed} of the {} files of {} failed (each is named above)",
                files.len(),
                list.display()
            ))
            .into());
        }
        Ok(())
    })
}

/// The paths `list` names, one a line (blank lines skipped); standard input cannot be one.
fn read_filelist(list: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(list)
        .with_context(|| format!("cannot read the file list {}", list.display()))?;
    let files: Vec<PathBuf> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(PathBuf::from)
        .collect();
    if files.iter().any(|f| f == Path::new(STDIO)) {
        bail!(
            "{}: standard input (-) cannot be one of a list's files",
            list.display()
        );
    }
    if files.is_empty() {
        bail!("{}: the file list names no file", list.display());
    }
    Ok(files)
}

/// Does `job` to `input` with M1 `m` (`own_m1`: given with --m1, not the built-in one).
fn one_file(job: Job, m: &Int8M1, own_m1: bool, io: &Streams, input: &Path) -> Result<()> {
    let test = match job {
        Job::Compress {
            coding,
            chunk_bytes,
        } => {
            let (output, remove_input) = target(io, input, false)?;
            let existing = Existing::replace_if(io.force);
            let r = compress_file(
                input,
                &output,
                m,
                coding,
                chunk_bytes,
                existing,
                io.progress(),
            )?;
            return finish(io, input, &r, "compressed", &output, remove_input);
        }
        Job::Decompress { test } => test,
    };
    let (output, remove_input) = match test {
        // Written through, as a device: nothing is kept.
        true => (PathBuf::from("/dev/null"), false),
        false => target(io, input, true)?,
    };
    let existing = Existing::replace_if(io.force || test);
    let r = decompress_file(input, &output, m, existing, io.progress()).map_err(|e| {
        if own_m1 {
            e
        } else {
            e.context("decompressing with the built-in M1 (give the file's own with --m1)")
        }
    })?;
    let what = if test { "tested" } else { "decompressed" };
    finish(io, input, &r, what, &output, remove_input)
}

/// The M1 at `path`, or the built-in one.
fn load_m1(path: Option<&Path>) -> Result<Int8M1> {
    match path {
        Some(p) => Int8M1::load(p),
        None => builtin_m1(),
    }
}

/// The output path and whether the input goes after success (only when the output's name is
/// derived from it, as xz does); refuses an existing output file without --force and a name
/// to derive from that lacks the suffix.
fn target(io: &Streams, input: &Path, decompressing: bool) -> Result<(PathBuf, bool)> {
    let stdio = Path::new(STDIO);
    let (output, derived) = match (&io.output, io.stdout) {
        (Some(_), true) => bail!("give OUTPUT or -c/--stdout, not both"),
        (Some(o), false) => (o.clone(), false),
        (None, true) => (stdio.to_path_buf(), false),
        (None, false) if input == stdio => (stdio.to_path_buf(), false),
        (None, false) => (derive(input, decompressing)?, true),
    };
    if output != stdio {
        check_output(&output, Existing::replace_if(io.force))?;
    }
    Ok((output, derived && !io.keep))
}

/// `input` with [`SUFFIX`] added, or (decompressing) removed.
fn derive(input: &Path, decompressing: bool) -> Result<PathBuf> {
    let name = input.as_os_str().to_string_lossy();
    if !decompressing {
        let mut out = input.as_os_str().to_owned();
        out.push(SUFFIX);
        return Ok(PathBuf::from(out));
    }
    match name.strip_suffix(SUFFIX) {
        Some(stem) if !stem.is_empty() && !stem.ends_with('/') => Ok(PathBuf::from(stem)),
        _ => bail!("{name}: no {SUFFIX} suffix to remove: give OUTPUT, or -c for standard output"),
    }
}

/// Prints the report (on stderr when the data went to stdout) and removes the input when asked.
fn finish(
    io: &Streams,
    input: &Path,
    r: &CompressReport,
    what: &str,
    output: &Path,
    remove_input: bool,
) -> Result<()> {
    let line = if io.json {
        serde_json::to_string(r)?
    } else {
        format!(
            "{what} {} bytes <-> {} bytes ({:.3} bits/byte, {}{} chunks by xz, {} stored) in {:.2} s, {:.0} bytes/s",
            r.original_bytes,
            r.compressed_bytes,
            r.bits_per_byte,
            match r.method {
                "ac" => "ac, ".to_string(),
                m => format!("{m}, {} windows, ", r.windows),
            },
            r.xz_chunks,
            r.stored_chunks,
            r.seconds,
            r.bytes_per_second
        )
    };
    match output == Path::new(STDIO) {
        true => eprintln!("{line}"),
        false => println!("{line}"),
    }
    if remove_input {
        std::fs::remove_file(input).with_context(|| {
            format!(
                "{what} into {}, but cannot remove {}",
                output.display(),
                input.display()
            )
        })?;
    }
    Ok(())
}
