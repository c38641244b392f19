//! The `debtorrent` binary: parses the command line and hands it to the
//! library (`src/lib.rs`), which does everything else.

fn main() -> std::process::ExitCode {
    let cli = match debtorrent::config::parse() {
        Ok(c) => c,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<clap::Error>() {
                ce.exit();
            }
            eprintln!("debtorrent: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    match debtorrent::run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("debtorrent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
