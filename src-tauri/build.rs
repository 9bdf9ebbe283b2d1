// The app manifest lists our commands, so tauri-build generates one `allow-<command>` permission
// per command and nothing is callable unless capabilities/default.json grants it.
include!("command-names.rs");

fn main() {
    // The page is embedded into the binary at compile time; tauri-build only watches
    // tauri.conf.json, so without this an edited ui/ file would not reach a debug build.
    println!("cargo:rerun-if-changed=../ui");
    tauri_build::try_build(
        tauri_build::Attributes::new()
            .app_manifest(tauri_build::AppManifest::new().commands(COMMAND_NAMES)),
    )
    .unwrap_or_else(|e| panic!("tauri-build: {e:#}"));
}
