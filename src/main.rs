#![forbid(unsafe_code)]

use clap::Parser;

// Two workers: the work is IO-bound (AWS calls, file events); a worker per core of a large node
// would only add threads and their memory.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = match trafficshift::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap exits 2 on usage errors, which `plan` uses for "changes": a typo in a GitOps
            // job must not read as a diff. Help and --version are not errors.
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                trafficshift::cli::exit::USAGE
            } else {
                trafficshift::cli::exit::OK
            });
        }
    };
    trafficshift::telemetry::init(cli.log_format, &cli.log_level);
    let code = match trafficshift::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    std::process::exit(code);
}
