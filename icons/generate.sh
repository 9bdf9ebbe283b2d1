#!/usr/bin/env bash
# Regenerates the PNG/ICO icons from icon.svg and tray*.svg (needs rsvg-convert from librsvg2-bin
# and ImageMagick's convert). The generated files are committed; run this only after editing an SVG.
set -euo pipefail
cd "$(dirname "$0")"
for size in 32 64 128 256 512; do
  rsvg-convert -w "$size" -h "$size" icon.svg -o "${size}x${size}.png"
done
cp 256x256.png 128x128@2x.png
cp 512x512.png icon.png
convert 32x32.png 64x64.png 128x128.png 256x256.png icon.ico
rsvg-convert -w 64 -h 64 tray.svg -o tray.png
rsvg-convert -w 64 -h 64 tray-unread.svg -o tray-unread.png
