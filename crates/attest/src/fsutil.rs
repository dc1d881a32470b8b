//! Small file helpers.

use crate::VerifyError;
use std::path::Path;

/// Writes `path` atomically: temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> Result<(), VerifyError> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| VerifyError::io(dir, e))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| VerifyError::io(path, e))
}
