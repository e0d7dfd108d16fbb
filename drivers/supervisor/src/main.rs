//! `openshell-sandbox [-- COMMAND...]`: the sandbox entrypoint. Starts COMMAND (the sandbox's
//! main process) if given, keeps the control session with the gateway, and exits with the
//! main process's exit code once that exit has been reported. Exit 2: bad environment.

use std::process::ExitCode;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let config = match openshell_supervisor::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = openshell_supervisor::workload::seal_supervisor() {
        eprintln!("error: cannot close the supervisor to its workload (prctl): {e}");
        return ExitCode::from(2);
    }
    let command: Vec<String> = std::env::args().skip(1).skip_while(|a| a == "--").collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (exit_tx, exit_rx) = tokio::sync::watch::channel(None::<i32>);
        let main = if command.is_empty() {
            None
        } else {
            let mut main = tokio::process::Command::new(&command[0]);
            main.args(&command[1..]);
            for var in openshell_supervisor::config::hidden_from_children() {
                main.env_remove(var);
            }
            let workload = &config.workload;
            if workload.switch {
                let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
                main.uid(workload.uid)
                    .gid(workload.gid)
                    .envs(workload.env())
                    .current_dir(workload.main_dir(&cwd));
            }
            match main.spawn()
            {
                Ok(child) => Some(child),
                Err(e) => {
                    eprintln!(
                        "error: cannot start the main process `{}`: {e}",
                        command.join(" ")
                    );
                    return ExitCode::from(127);
                }
            }
        };
        let mut session = tokio::spawn(openshell_supervisor::session::run(config, exit_rx));
        // `stop` sends SIGTERM to the supervisor (PID 1): end the main process, report it,
        // and close the session cleanly so the gateway sees the sandbox go at once.
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot watch for SIGTERM: {e}");
                return ExitCode::FAILURE;
            }
        };
        let Some(mut child) = main else {
            tokio::select! {
                _ = term.recv() => {
                    let _ = exit_tx.send(Some(143));
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut session).await;
                }
                _ = &mut session => {}
            }
            return ExitCode::SUCCESS;
        };
        let waited = tokio::select! {
            r = child.wait() => r,
            _ = term.recv() => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        let code = match waited {
            Ok(status) => status.code().unwrap_or(128 + 9),
            Err(_) => 128,
        };
        tracing::info!(code, "main process exited");
        let _ = exit_tx.send(Some(code));
        // The session reports the exit when connected; do not wait forever when it is not.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), session).await;
        ExitCode::from(u8::try_from(code).unwrap_or(1))
    })
}
