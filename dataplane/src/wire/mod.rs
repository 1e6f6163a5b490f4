//! Zero-copy header views, builders and checksums. (Being written.)
