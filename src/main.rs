#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = trafficshift::cli::Cli::parse();
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
