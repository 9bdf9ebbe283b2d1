//! What the sender's app learns about a file before sending it: its type (from its first
//! bytes, through `infer`) and, for a JPEG, PNG, GIF or WebP image, a small preview made here
//! and carried in the file message, so the receiver shows the picture before (or without)
//! downloading it.
//!
//! An image is untrusted input (a pasted or dropped file may come from anywhere): it is decoded
//! with the `image` crate's limits ([`MAX_SOURCE_SIDE`], [`MAX_DECODE_ALLOC`]) so a
//! decompression bomb is refused instead of filling the memory, and only when the file is at
//! most [`MAX_SOURCE_BYTES`]. A file that is no image, too large or broken is sent without a
//! preview; making a preview never fails a send.

use std::io::{Cursor, Read};
use std::path::Path;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};

pub use crate::storage::files::is_previewable;
use crate::storage::files::{Thumbnail, MAX_THUMBNAIL_BYTES};

/// The longest side of the previews made here, in pixels: what the conversation shows (a
/// sharper one would cost bytes in every file message for nothing).
pub const PREVIEW_SIDE: u32 = 320;
/// Largest image file a preview is made of, in bytes (bigger images are sent as a card).
pub const MAX_SOURCE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest width or height of an image a preview is made of, in pixels.
pub const MAX_SOURCE_SIDE: u32 = 16_384;
/// Most memory the decoder may allocate for one image: a 16 Mpx RGBA image and change.
pub const MAX_DECODE_ALLOC: u64 = 128 * 1024 * 1024;
/// How many bytes of a file are read to tell its type.
const SNIFF_BYTES: u64 = 8 * 1024;
/// Type of a file `infer` does not recognise.
pub const UNKNOWN_MIME: &str = "application/octet-stream";
/// JPEG qualities tried, best first, until the preview fits [`MAX_THUMBNAIL_BYTES`].
const JPEG_QUALITIES: [u8; 4] = [80, 65, 50, 35];

/// The type of the file at `path` from its first bytes; [`UNKNOWN_MIME`] when unknown.
///
/// # Errors
/// The file cannot be opened or read.
pub fn sniff_mime(path: &Path) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(SNIFF_BYTES as usize);
    std::fs::File::open(path)?
        .take(SNIFF_BYTES)
        .read_to_end(&mut head)?;
    Ok(mime_of(&head))
}

/// The type of a file starting with `head`; [`UNKNOWN_MIME`] when unknown.
pub fn mime_of(head: &[u8]) -> String {
    infer::get(head)
        .map(|t| t.mime_type().to_owned())
        .unwrap_or_else(|| UNKNOWN_MIME.to_owned())
}

/// A preview of the image at `path` of type `mime`, or `None` when it is no previewable
/// image, is larger than [`MAX_SOURCE_BYTES`], breaks a decoding limit or is damaged.
pub fn thumbnail_of_file(path: &Path, mime: &str) -> Option<Thumbnail> {
    if !is_previewable(mime) {
        return None;
    }
    let len = std::fs::metadata(path).ok()?.len();
    if len > MAX_SOURCE_BYTES {
        return None;
    }
    let mut reader = ImageReader::open(path).ok()?.with_guessed_format().ok()?;
    reader.limits(limits());
    let image = reader.decode().ok()?;
    make(&image)
}

/// A preview of an image given as bytes (see [`thumbnail_of_file`]).
pub fn thumbnail_of_bytes(bytes: &[u8]) -> Option<Thumbnail> {
    if bytes.len() as u64 > MAX_SOURCE_BYTES || !is_previewable(&mime_of(bytes)) {
        return None;
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?;
    reader.limits(limits());
    let image = reader.decode().ok()?;
    make(&image)
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SOURCE_SIDE);
    limits.max_image_height = Some(MAX_SOURCE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    limits
}

/// Scales `image` to fit [`PREVIEW_SIDE`] and encodes it within
/// [`MAX_THUMBNAIL_BYTES`]: PNG when it has transparency and fits, else JPEG at the best
/// quality that fits, halving the size when none does.
fn make(image: &DynamicImage) -> Option<Thumbnail> {
    // `thumbnail` also enlarges: a small image is kept at its size.
    let mut small = if image.width() <= PREVIEW_SIDE && image.height() <= PREVIEW_SIDE {
        image.clone()
    } else {
        image.thumbnail(PREVIEW_SIDE, PREVIEW_SIDE)
    };
    if small.color().has_alpha() {
        let mut png = Vec::new();
        if small
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .is_ok()
            && png.len() <= MAX_THUMBNAIL_BYTES
        {
            return bounded(Thumbnail {
                mime: "image/png".into(),
                width: small.width(),
                height: small.height(),
                bytes: png,
            });
        }
    }
    loop {
        let rgb = DynamicImage::ImageRgb8(small.to_rgb8());
        for quality in JPEG_QUALITIES {
            let mut jpeg = Vec::new();
            let mut encoder =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, quality);
            if encoder.encode_image(&rgb).is_ok() && jpeg.len() <= MAX_THUMBNAIL_BYTES {
                return bounded(Thumbnail {
                    mime: "image/jpeg".into(),
                    width: rgb.width(),
                    height: rgb.height(),
                    bytes: jpeg,
                });
            }
        }
        if small.width() <= 16 && small.height() <= 16 {
            return None;
        }
        small = small.thumbnail(small.width() / 2, small.height() / 2);
    }
}

fn bounded(thumbnail: Thumbnail) -> Option<Thumbnail> {
    thumbnail.is_within_bounds().then_some(thumbnail)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};

    /// A noisy picture (noise compresses badly, so the byte bound is really exercised).
    fn noisy(width: u32, height: u32) -> RgbImage {
        let mut state = 0x2545_f491_u32;
        RgbImage::from_fn(width, height, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let [a, b, c, _] = state.to_le_bytes();
            Rgb([a, b, c])
        })
    }

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        image.write_to(&mut Cursor::new(&mut out), format).unwrap();
        out
    }

    #[test]
    fn every_previewed_format_gets_a_bounded_preview_with_its_aspect_ratio() {
        let picture = DynamicImage::ImageRgb8(noisy(800, 450));
        for format in [
            ImageFormat::Jpeg,
            ImageFormat::Png,
            ImageFormat::Gif,
            ImageFormat::WebP,
        ] {
            let bytes = encode(&picture, format);
            assert!(is_previewable(&mime_of(&bytes)), "{format:?}");
            let thumb = thumbnail_of_bytes(&bytes).expect("a preview");
            assert!(thumb.is_within_bounds(), "{format:?}");
            assert_eq!(thumb.width, PREVIEW_SIDE, "{format:?}");
            assert_eq!(thumb.height, 180, "{format:?}");
            // The preview is itself an image that decodes.
            let decoded = image::load_from_memory(&thumb.bytes).unwrap();
            assert_eq!(decoded.width(), thumb.width);
        }
    }

    #[test]
    fn transparency_is_kept_as_png_and_a_small_image_is_not_enlarged() {
        let clear = DynamicImage::ImageRgba8(RgbaImage::from_pixel(40, 30, Rgba([9, 9, 9, 0])));
        let thumb = thumbnail_of_bytes(&encode(&clear, ImageFormat::Png)).unwrap();
        assert_eq!(thumb.mime, "image/png");
        assert_eq!((thumb.width, thumb.height), (40, 30));
    }

    #[test]
    fn a_decompression_bomb_is_refused_without_decoding_it() {
        // A PNG header declaring 100 000 × 100 000 pixels (40 GB decoded), bytes of a few KB:
        // the dimension limit refuses it before any pixel buffer is allocated.
        let mut bomb = Vec::new();
        let encoder = image::codecs::png::PngEncoder::new(&mut bomb);
        let row = vec![0u8; 100];
        let _ = encoder.write_image(&row, 100, 1, image::ExtendedColorType::L8);
        // Patch the IHDR's width and height (bytes 16..24) and its CRC.
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(mime_of(&bomb), "image/png");
        assert_eq!(thumbnail_of_bytes(&bomb), None);
    }

    /// CRC-32 of PNG chunks (ISO 3309), bitwise: test-only, a few bytes.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn damaged_images_and_other_files_get_no_preview_and_a_type() {
        // A cut PNG (the JPEG decoder fills a cut image with grey, which is fine too).
        let mut png = encode(&DynamicImage::ImageRgb8(noisy(64, 64)), ImageFormat::Png);
        png.truncate(png.len() / 3);
        assert!(thumbnail_of_bytes(&png).is_none());
        assert_eq!(thumbnail_of_bytes(b"plain text"), None);
        assert_eq!(mime_of(b"plain text"), UNKNOWN_MIME);
        assert_eq!(mime_of(b"%PDF-1.7\n"), "application/pdf");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("photo.webp");
        std::fs::write(
            &path,
            encode(&DynamicImage::ImageRgb8(noisy(500, 500)), ImageFormat::WebP),
        )
        .unwrap();
        assert_eq!(sniff_mime(&path).unwrap(), "image/webp");
        let thumb = thumbnail_of_file(&path, "image/webp").unwrap();
        assert_eq!((thumb.width, thumb.height), (320, 320));
        assert_eq!(thumbnail_of_file(&path, "application/pdf"), None);
        assert!(sniff_mime(&dir.path().join("absent")).is_err());
    }
}
