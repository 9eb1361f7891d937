//! The presets built into the binary, so that `easel` and `easel bench` work outside a
//! checkout: the default preset (the seed's settings), `best` (presets/best.yaml) and
//! their two images, written once into the user's cache folder and read from there like
//! any preset.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// A built-in preset: its name, its YAML, and the images its paths name.
pub struct Builtin {
    pub name: &'static str,
    pub yaml: &'static str,
    pub images: &'static [(&'static str, &'static [u8])],
}

/// The demo's images, which both built-in presets use.
const DEMO_IMAGES: &[(&str, &[u8])] = &[
    (
        "chelsea.png",
        include_bytes!("../presets/images/chelsea.png"),
    ),
    (
        "starry_night.jpg",
        include_bytes!("../presets/images/starry_night.jpg"),
    ),
];

pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "default",
        yaml: include_str!("../presets/default.yaml"),
        images: DEMO_IMAGES,
    },
    Builtin {
        name: "best",
        yaml: include_str!("../presets/best.yaml"),
        images: DEMO_IMAGES,
    },
];

/// easel's folder in the user's cache (XDG on Linux, the platform's elsewhere), where
/// the weights and the built-in presets live; `None` where the platform has none.
pub fn cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("easel"))
}

/// The default preset: `presets/default.yaml` in a checkout (the current folder), else
/// the built-in one.
pub fn default_preset() -> Result<PathBuf> {
    let local = Path::new("presets/default.yaml");
    if local.is_file() {
        return Ok(local.to_path_buf());
    }
    materialize(&BUILTINS[0])
}

/// The preset `easel run ARG` means: the file `arg` where it exists; else, for a bare
/// name, presets/NAME.yaml in the current folder, the built-in preset NAME, or the
/// preset in presets/ whose `name:` is NAME (what names its runs); else `arg` itself,
/// for the loader to say what is wrong with it, or for a bare name, an error that
/// lists the names there are.
pub fn resolve(arg: &Path) -> Result<PathBuf> {
    let name = arg.to_str().unwrap_or_default();
    if arg.exists() || !is_bare_name(arg) {
        return Ok(arg.to_path_buf());
    }
    let local = Path::new("presets");
    let by_file = local.join(format!("{name}.yaml"));
    if by_file.is_file() {
        return Ok(by_file);
    }
    if let Some(builtin) = BUILTINS.iter().find(|b| b.name == name) {
        return materialize(builtin);
    }
    let files = preset_files(local);
    if let Some(found) = files
        .iter()
        .find(|f| preset_name(f).as_deref() == Some(name))
    {
        return Ok(found.clone());
    }
    let names: Vec<String> = BUILTINS
        .iter()
        .map(|b| b.name.to_string())
        .chain(files.iter().filter_map(|f| typed_name(f)))
        .collect();
    bail!(
        "no preset {name}: there is no file {name}, no presets/{name}.yaml, and no preset of that name. Give a preset's path, or one of: {} (`easel presets` lists them)",
        names.join(", ")
    )
}

/// Whether `arg` is a bare name (`best`), which may name a preset, rather than a path.
pub fn is_bare_name(arg: &Path) -> bool {
    arg.components().count() == 1 && arg.extension().is_none()
}

/// The `.yaml` files in `dir`, sorted.
fn preset_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"));
    files.sort();
    files
}

/// What `easel run` takes for the file `path` in presets/: its stem.
fn typed_name(path: &Path) -> Option<String> {
    path.file_stem().map(|s| s.to_string_lossy().into_owned())
}

/// The `name:` of the preset in `path`, where it loads.
fn preset_name(path: &Path) -> Option<String> {
    crate::preset::Preset::load(path, &[]).ok().map(|p| p.name)
}

/// Writes a built-in preset and its images under the cache folder (where they are not
/// already as built in) and returns the preset's path.
pub fn materialize(builtin: &Builtin) -> Result<PathBuf> {
    let dir = cache_dir()
        .context("this system has no cache folder for the built-in presets; run easel from its checkout, or give a preset with `easel run PRESET`")?
        .join("presets");
    let images = dir.join("images");
    std::fs::create_dir_all(&images)
        .with_context(|| format!("cannot create {}", images.display()))?;
    let preset = dir.join(format!("{}.yaml", builtin.name));
    let files = builtin
        .images
        .iter()
        .map(|(name, bytes)| (images.join(name), *bytes))
        .chain([(preset.clone(), builtin.yaml.as_bytes())]);
    for (path, bytes) in files {
        if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            crate::atomic::write(&path, bytes)?;
        }
    }
    Ok(preset)
}

/// `easel presets`: the built-in presets, then the `.yaml` files in `local`, each with
/// what `easel run` takes for it, its name (which names its runs), size and iterations
/// (or why it does not load).
pub fn list_presets(local: &Path) -> Result<String> {
    let mut out = String::from("built in (`easel run NAME`; `easel` alone runs default):\n");
    for b in BUILTINS {
        out += &describe(b.name, &materialize(b)?);
    }
    let files = preset_files(local);
    out += &format!(
        "in {}/ (`easel run NAME`, or the file's path):\n",
        local.display()
    );
    if files.is_empty() {
        out += "  none\n";
    }
    for f in files {
        out += &describe(&typed_name(&f).unwrap_or_default(), &f);
    }
    Ok(out)
}

fn describe(typed: &str, path: &Path) -> String {
    match crate::preset::Preset::load(path, &[]) {
        Ok(p) => {
            let size = match p.size {
                crate::image::Size::Exact { width, height } => format!("{width}x{height}"),
                crate::image::Size::MaxSide { max_side } => format!("long side {max_side}"),
            };
            format!(
                "  {typed:<10} {:<24} {size}, {} iterations  {}\n",
                p.name,
                p.iterations,
                path.display()
            )
        }
        Err(e) => format!("  {typed:<10} does not load ({}): {e:#}\n", path.display()),
    }
}
