// Object bytes move through buffers of up to a few MiB, allocated and freed
// at a high rate on every hop; glibc maps each one afresh and faults its
// pages in (a fifth of a slave's CPU on a cold read), jemalloc reuses them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    eltonfs::cli::main()
}
