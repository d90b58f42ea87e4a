//! Helpers for unit tests.

/// Opens the database again after the previous handle was dropped.
/// sled's flusher thread lets go of the directory's lock a moment after the
/// last handle: under a loaded test run the first attempt can find it still
/// held. There is no event to await, so this retries.
pub fn reopen(path: &std::path::Path) -> crate::database::Database {
    for _ in 0..100 {
        if let Ok(db) = crate::database::Database::open_default(path) {
            return db;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    crate::database::Database::for_tests(path)
}
