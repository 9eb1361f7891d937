//! Float buffers reused from one iteration to the next by the CPU path.
//!
//! Every iteration needs the same large buffers again (activations, gradients, the
//! Winograd products). Fresh ones come from the operating system as untouched pages, and
//! each first touch is a page fault: at 512x512 that was a fifth of the iteration's
//! time, in the kernel. Buffers given back here are handed out again instead.

use std::sync::Mutex;

/// At most this many buffers wait for reuse; beyond it the smallest are freed.
const KEEP: usize = 48;

static FREE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` zeros, reusing the smallest free buffer that holds `len` floats.
pub fn zeroed(len: usize) -> Vec<f32> {
    let mut b = any(len);
    b.fill(0.0);
    b
}

/// A buffer of `len` floats with any contents, for a caller that writes every one: a
/// reused buffer is not cleared first.
pub fn any(len: usize) -> Vec<f32> {
    let reused = {
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        best.map(|i| free.swap_remove(i))
    };
    match reused {
        Some(mut b) => {
            // Only floats beyond the old length are written here.
            b.resize(len, 0.0);
            b
        }
        None => vec![0.0; len],
    }
}

/// Frees every buffer waiting for reuse: between the passes of a tiled evaluation,
/// whose crops differ in size, the last pass's buffers would otherwise be kept beside
/// the next one's (gigabytes at 1024-pixel tiles).
pub fn clear() {
    let freed = std::mem::take(&mut *FREE.lock().unwrap_or_else(|e| e.into_inner()));
    drop(freed);
}

/// The bytes the buffers waiting for reuse hold.
pub fn pooled_bytes() -> usize {
    let free = FREE.lock().unwrap_or_else(|e| e.into_inner());
    free.iter().map(|b| b.capacity() * 4).sum()
}

/// Frees the smallest waiting buffers until they hold at most `bytes`. A small request
/// takes the smallest buffer that holds it, which may be a large one while the small
/// ones are in use; the large request after it then allocates anew, and over many
/// passes of the same size the pool fills with such sets (tiles: past 24 GB).
pub fn trim_to(bytes: usize) {
    let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
    free.sort_by_key(|b| std::cmp::Reverse(b.capacity()));
    let mut total = 0;
    free.retain(|b| {
        total += b.capacity() * 4;
        total <= bytes
    });
}

/// Gives a buffer back for reuse.
pub fn give(buffer: Vec<f32>) {
    if buffer.capacity() < 4096 {
        return;
    }
    let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
    free.push(buffer);
    if free.len() > KEEP {
        free.sort_by_key(|b| std::cmp::Reverse(b.capacity()));
        free.truncate(KEEP);
    }
}
