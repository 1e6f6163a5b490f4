//! The `kxdp` binary.
#![forbid(unsafe_code)]

fn main() {
    println!("kxdp");
}
