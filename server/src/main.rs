//! The `pinion-server` binary: everything lives in the library; see `cli::run`.

fn main() -> std::process::ExitCode {
    pinion_server::cli::main()
}
