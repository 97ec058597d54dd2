//! giftx-cli
