#![forbid(unsafe_code)]

use clap::Parser;

// One worker: the work is IO-bound (AWS calls, file events). The controller's loop runs on the
// main thread (`block_on`); the worker runs the HTTP server, the poller and the connections.
// Each further thread costs its stack and, once it allocates, a malloc arena of its own.
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
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
