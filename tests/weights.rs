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
