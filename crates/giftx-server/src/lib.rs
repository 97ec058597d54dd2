//! giftx-server
