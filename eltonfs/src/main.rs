fn main() -> std::process::ExitCode {
    eltonfs::cli::main()
}
