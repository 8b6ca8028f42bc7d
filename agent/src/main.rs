//! The `pinion-agent` binary: everything lives in the library; see `cli::main`.

fn main() -> std::process::ExitCode {
    pinion_agent::cli::main()
}
