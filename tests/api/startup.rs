//! Starting the binary: any SQLite URL a user gives it works as the default does, and a
//! start-up failure says in a line or two what failed and what to do.

use std::{path::Path, process::Stdio, time::Duration};

use tokio::io::AsyncReadExt;

use crate::helpers::WAIT;

/// Runs `funko-live` in `dir` with `args` until it logs its address (`Ok`, with what it
/// logged) or exits (`Err`, with its status and what it wrote); it is stopped either way.
async fn start_in(dir: &Path, args: &[&str]) -> Result<String, (std::process::ExitStatus, String)> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_funko-live"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        .env_remove("DATABASE_URL")
        .env_remove("API_TOKENS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting funko-live");
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let mut output = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut out_buf, mut err_buf) = ([0u8; 4096], [0u8; 4096]);
    loop {
        let text = String::from_utf8_lossy(&output).into_owned();
        if text.contains("listening on http://") {
            child.kill().await.unwrap();
            return Ok(text);
        }
        let (read, buf) = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                n = stdout.read(&mut out_buf) => (n.unwrap(), &out_buf),
                n = stderr.read(&mut err_buf) => (n.unwrap(), &err_buf),
            }
        })
        .await
        .expect("funko-live starts or exits in time");
        if read == 0 {
            // One pipe closed: the process is exiting; collect the rest.
            let mut rest = Vec::new();
            let _ = stdout.read_to_end(&mut rest).await;
            let _ = stderr.read_to_end(&mut rest).await;
            output.extend(rest);
            let status = tokio::time::timeout(WAIT, child.wait())
                .await
                .unwrap()
                .unwrap();
            return Err((status, String::from_utf8_lossy(&output).into_owned()));
        }
        output.extend_from_slice(&buf[..read]);
    }
}

/// The lines a failed start wrote besides its logs.
fn error_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|line| !line.contains(" INFO ") && !line.trim().is_empty())
        .collect()
}

#[tokio::test]
async fn a_new_sqlite_file_named_in_the_url_is_created_and_migrated() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "sqlite://store.db".to_owned(),
        "sqlite:other.db".to_owned(),
        format!("sqlite://{}/nested/dir/third.db", dir.path().display()),
    ] {
        let logged = start_in(
            dir.path(),
            &["--bind", "127.0.0.1:0", "--database-url", &url],
        )
        .await
        .unwrap_or_else(|(status, output)| panic!("{url}: {status}\n{output}"));
        assert!(logged.contains("listening on"), "{url}");
    }
    for file in ["store.db", "other.db", "nested/dir/third.db"] {
        assert!(dir.path().join(file).exists(), "{file} was created");
    }
}

#[tokio::test]
async fn start_up_failures_say_what_failed_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (status, output) = start_in(dir.path(), &["--bind", &address])
        .await
        .unwrap_err();
    assert!(!status.success());
    let lines = error_lines(&output);
    assert!(lines.len() <= 2, "one or two lines: {output}");
    assert!(
        lines.join("\n").contains(&address),
        "names the address: {output}"
    );
    assert!(
        lines.join("\n").contains("--bind"),
        "says what to do: {output}"
    );

    // A PostgreSQL nobody listens for: the URL is named without its password.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("postgres://funko:hunter2@127.0.0.1:{port}/store");
    let (status, output) = start_in(
        dir.path(),
        &["--bind", "127.0.0.1:0", "--database-url", &url],
    )
    .await
    .unwrap_err();
    assert!(!status.success());
    let lines = error_lines(&output).join("\n");
    assert!(
        error_lines(&output).len() <= 2,
        "one or two lines: {output}"
    );
    assert!(
        !output.contains("hunter2"),
        "the password is not shown: {output}"
    );
    assert!(
        lines.contains(&format!("127.0.0.1:{port}/store")),
        "{output}"
    );
    assert!(lines.contains("DATABASE_URL"), "says what to do: {output}");

    // A SQLite file that cannot be created.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let url = format!("sqlite://{}/inside/store.db", blocker.display());
    let (status, output) = start_in(
        dir.path(),
        &["--bind", "127.0.0.1:0", "--database-url", &url],
    )
    .await
    .unwrap_err();
    assert!(!status.success());
    let lines = error_lines(&output).join("\n");
    assert!(
        error_lines(&output).len() <= 2,
        "one or two lines: {output}"
    );
    assert!(lines.contains(&blocker.display().to_string()), "{output}");
}
