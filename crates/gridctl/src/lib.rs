//! `gridctl`: the library behind the program, so `crates/node` can link it in.

pub mod cli;
