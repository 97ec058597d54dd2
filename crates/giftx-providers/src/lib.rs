//! giftx-providers
