//! Compiles the XDP programs with clang for the `bpf` target: the
//! steering program (`bpf/steer.c` -> `steer.bpf.o`) and the benchmark's
//! in-kernel redirect baseline (`bpf/redirect.c` -> `redirect.bpf.o`).
//! The objects are embedded into the crate with `include_bytes!`; no
//! prebuilt object is committed.
//!
//! Needs clang (with the BPF backend) and the libbpf headers
//! (`bpf/bpf_helpers.h`): Debian packages `clang`, `llvm`, `libbpf-dev`,
//! `libelf-dev`, `zlib1g-dev`, `linux-libc-dev`. Set `CLANG` to use
//! another compiler binary.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `(source, object file name in OUT_DIR)`.
const PROGRAMS: [(&str, &str); 2] = [
    ("bpf/steer.c", "steer.bpf.o"),
    ("bpf/redirect.c", "redirect.bpf.o"),
];

fn main() {
    println!("cargo:rerun-if-env-changed=CLANG");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    for (source, object) in PROGRAMS {
        println!("cargo:rerun-if-changed={source}");
        compile(&clang, source, &out_dir.join(object));
    }
}

fn compile(clang: &str, source: &str, object: &Path) {
    let mut cmd = Command::new(clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]);
    // <linux/types.h> includes <asm/types.h>, which Debian keeps under the
    // host's multiarch directory.
    if let Some(dir) = multiarch_include() {
        cmd.arg(format!("-I{}", dir.display()));
    }
    cmd.arg("-c").arg(source).arg("-o").arg(object);

    let status = match cmd.status() {
        Ok(status) => status,
        Err(err) => {
            // A build script reports failure by panicking; say exactly what is missing.
            panic!(
                "kxdp-ffi: cannot run `{clang}` to compile the XDP program {source}: {err}. \
                 Install clang and libbpf-dev (Debian: apt-get install clang llvm libbpf-dev \
                 libelf-dev zlib1g-dev) or point CLANG at a clang with the BPF target."
            );
        }
    };
    if !status.success() {
        panic!("kxdp-ffi: `{clang}` failed to compile {source} for the bpf target ({status})");
    }
}

fn multiarch_include() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let dir = Path::new("/usr/include").join(format!("{arch}-linux-gnu"));
    dir.join("asm").is_dir().then_some(dir)
}
