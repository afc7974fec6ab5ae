//! Loading documents from files and directories, with file:line:column errors.
pub struct Loaded;
pub struct SplitDoc;
pub fn load_paths() {}
