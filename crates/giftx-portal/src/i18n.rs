//! Japanese and English: the language of a request (cookie, then
//! `Accept-Language`), every text of the pages, and dates and money as a
//! holder reads them (Japan time).

/// A page language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// 日本語.
    Ja,
    /// English.
    En,
}

impl Lang {
    /// The BCP 47 tag (`<html lang>`, the cookie value).
    pub fn code(self) -> &'static str {
        match self {
            Lang::Ja => "ja",
            Lang::En => "en",
        }
    }

    /// `ja` or `en`.
    pub fn from_code(s: &str) -> Option<Lang> {
        match s {
            "ja" => Some(Lang::Ja),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// The other language (for the switch).
    pub fn other(self) -> Lang {
        match self {
            Lang::Ja => Lang::En,
            Lang::En => Lang::Ja,
        }
    }

    /// The language chosen with the switch (cookie), else the first of
    /// `ja`/`en` the browser prefers, else Japanese.
    pub fn negotiate(cookie: Option<&str>, accept_language: Option<&str>) -> Lang {
        if let Some(l) = cookie.and_then(Lang::from_code) {
            return l;
        }
        let Some(header) = accept_language else {
            return Lang::Ja;
        };
        let mut best: Option<(f32, Lang)> = None;
        for part in header.split(',') {
            let mut it = part.trim().split(';');
            let tag = it.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = it
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let lang = if tag == "ja" || tag.starts_with("ja-") {
                Lang::Ja
            } else if tag == "en" || tag.starts_with("en-") {
                Lang::En
            } else {
                continue;
            };
            if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, lang));
            }
        }
        best.map_or(Lang::Ja, |(_, l)| l)
    }

    /// The texts of this language.
    pub fn t(self) -> &'static Texts {
        match self {
            Lang::Ja => &JA,
            Lang::En => &EN,
        }
    }
}

/// Every fixed text of the pages.
#[allow(missing_docs)]
pub struct Texts {
    pub site: &'static str,
    pub switch_label: &'static str,
    pub switch_name: &'static str,
    pub start_title: &'static str,
    pub start_intro: &'static str,
    pub code_label: &'static str,
    pub code_hint: &'static str,
    pub key_label: &'static str,
    pub key_hint: &'static str,
    pub select_title: &'static str,
    pub select_intro: &'static str,
    pub gift_id_label: &'static str,
    pub gift_id_hint: &'static str,
    pub mgmt_label: &'static str,
    pub mgmt_hint: &'static str,
    pub next: &'static str,
    pub check: &'static str,
    pub select_link: &'static str,
    pub value: &'static str,
    pub deadline: &'static str,
    pub options_title: &'static str,
    pub options_legend: &'static str,
    pub mailed_note: &'static str,
    pub address_label: &'static str,
    pub address_hint: &'static str,
    pub email_label: &'static str,
    pub email_hint: &'static str,
    pub prefs_legend: &'static str,
    pub delete_data: &'static str,
    pub stop_mail: &'static str,
    pub confirm_title: &'static str,
    pub confirm_intro: &'static str,
    pub chosen: &'static str,
    pub none: &'static str,
    pub yes: &'static str,
    pub no: &'static str,
    pub confirm: &'static str,
    pub change: &'static str,
    pub result_title: &'static str,
    pub already_note: &'static str,
    pub gift_code: &'static str,
    pub pin: &'static str,
    pub gift_code_howto: &'static str,
    pub redeem_at: &'static str,
    pub usable_until: &'static str,
    pub gift_id: &'static str,
    pub mgmt_number: &'static str,
    pub gift_id_howto: &'static str,
    pub use_select_now: &'static str,
    pub shipment_ref: &'static str,
    pub shipment_waiting: &'static str,
    pub shipment_shipped: &'static str,
    pub tracking: &'static str,
    pub receipt: &'static str,
    pub donation_thanks: &'static str,
    pub reference: &'static str,
    pub come_back: &'static str,
    pub pending_title: &'static str,
    pub pending_body: &'static str,
    pub check_again: &'static str,
    pub failed_title: &'static str,
    pub failed_body: &'static str,
    pub choose_again: &'static str,
    pub error_title: &'static str,
    pub start_over: &'static str,
    pub err_code_format: &'static str,
    pub err_code_check: &'static str,
    pub err_key_format: &'static str,
    pub err_key_check: &'static str,
    pub err_required: &'static str,
    pub err_choose_option: &'static str,
    pub err_address: &'static str,
    pub err_email: &'static str,
    pub err_mismatch: &'static str,
    pub err_locked: &'static str,
    pub err_locked_until: &'static str,
    pub err_expired: &'static str,
    pub err_expired_todo: &'static str,
    pub err_void: &'static str,
    pub err_void_todo: &'static str,
    pub err_in_flight: &'static str,
    pub err_in_flight_todo: &'static str,
    pub err_unavailable: &'static str,
    pub err_unavailable_todo: &'static str,
    pub err_stock: &'static str,
    pub err_throttled: &'static str,
    pub err_throttled_todo: &'static str,
    pub err_session: &'static str,
    pub err_session_todo: &'static str,
    pub err_internal: &'static str,
    pub err_internal_todo: &'static str,
    pub err_not_found: &'static str,
    pub retry_after: &'static str,
    pub retry: &'static str,
    pub privacy_note: &'static str,
}

/// 日本語.
pub static JA: Texts = Texts {
    site: "お詫びギフト受付",
    switch_label: "Language",
    switch_name: "English",
    start_title: "ギフトの受け取り",
    start_intro: "お手紙に印刷されたギフトコードとログインキーを入力してください。大文字・小文字、ハイフンやスペースの有無は問いません。",
    code_label: "ギフトコード",
    code_hint: "16文字(例: AB12-CD34-EF56-GH78)",
    key_label: "ログインキー",
    key_hint: "8文字(例: JK90-MN12)",
    select_title: "選べるギフトの交換",
    select_intro: "選べるギフトのギフトIDと管理番号を入力し、電子マネーまたはギフトコードに交換してください。",
    gift_id_label: "ギフトID",
    gift_id_hint: "16文字(例: AB12-CD34-EF56-GH78)",
    mgmt_label: "管理番号",
    mgmt_hint: "8文字(例: JK90-MN12)",
    next: "次へ",
    check: "確認する",
    select_link: "選べるギフトをお持ちの方はこちら",
    value: "金額",
    deadline: "受付期限",
    options_title: "ギフトを選んでください",
    options_legend: "受け取るギフト",
    mailed_note: "郵送のギフトには送付先の住所が必要です。",
    address_label: "送付先(郵送のギフトを選んだ場合のみ)",
    address_hint: "郵便番号、住所、お名前を封筒に書くとおりに入力してください。",
    email_label: "メールアドレス(任意)",
    email_hint: "再表示のお問い合わせの際の本人確認に使います。",
    prefs_legend: "個人情報とお知らせ",
    delete_data: "交換後、私の個人情報を削除してください",
    stop_mail: "今後、郵便でのお知らせは不要です",
    confirm_title: "内容の確認",
    confirm_intro: "以下の内容で交換します。交換後は取り消せません。",
    chosen: "ギフト",
    none: "なし",
    yes: "はい",
    no: "いいえ",
    confirm: "この内容で交換する",
    change: "選び直す",
    result_title: "交換が完了しました",
    already_note: "このギフトコードは交換済みです。交換の内容を表示しています。",
    gift_code: "ギフトコード",
    pin: "PIN",
    gift_code_howto: "下記のサイトでこのコードを入力するとご利用いただけます。この画面を保存するか、コードを控えてください。",
    redeem_at: "利用サイト",
    usable_until: "有効期限",
    gift_id: "ギフトID",
    mgmt_number: "管理番号",
    gift_id_howto: "選べるギフトです。ギフトIDと管理番号を控え、選べるギフトの交換ページで電子マネーまたはギフトコードに交換してください。",
    use_select_now: "選べるギフトを今すぐ交換する",
    shipment_ref: "発送受付番号",
    shipment_waiting: "ご指定の住所へ郵送します。発送まで数週間かかる場合があります。",
    shipment_shipped: "発送済みです。発送日:",
    tracking: "追跡番号",
    receipt: "寄付受領番号",
    donation_thanks: "全額を寄付しました。ご協力ありがとうございます。",
    reference: "受付番号",
    come_back: "同じギフトコードとログインキーを入力すれば、いつでもこの内容を再表示できます。",
    pending_title: "交換を処理しています",
    pending_body: "ギフトの発行を待っています。二重に交換されることはありません。少し待ってから確認してください。",
    check_again: "もう一度確認する",
    failed_title: "このギフトは交換できませんでした",
    failed_body: "提供元がこのギフトの発行を受け付けませんでした。ギフトコードは未使用のままです。別のギフトを選んでください。",
    choose_again: "ギフトを選び直す",
    error_title: "ご確認ください",
    start_over: "最初からやり直す",
    err_code_format: "ギフトコードは16文字です。0〜9とA〜Z(Uを除く)で入力してください。",
    err_code_check: "ギフトコードに入力間違いがあるようです。お手紙と見比べてください。",
    err_key_format: "ログインキーは8文字です。0〜9とA〜Z(Uを除く)で入力してください。",
    err_key_check: "ログインキーに入力間違いがあるようです。お手紙と見比べてください。",
    err_required: "入力してください。",
    err_choose_option: "受け取るギフトを選んでください。",
    err_address: "送付先を4〜400文字、8行以内で入力してください。",
    err_email: "メールアドレスの形式が正しくありません。",
    err_mismatch: "ギフトコードまたはログインキーが違います。お手紙と見比べて入力し直してください。何度も間違えると一時的にロックされます。",
    err_locked: "入力間違いが続いたため、このギフトコードは一時的にロックされています。",
    err_locked_until: "ロック解除の時刻:",
    err_expired: "このギフトコードの受付期限は過ぎています。",
    err_expired_todo: "期限後の交換はできません。ご不明な点はお手紙に記載の窓口にお問い合わせください。",
    err_void: "このギフトコードは無効になっています。",
    err_void_todo: "お手紙に記載の窓口にお問い合わせください。",
    err_in_flight: "このギフトコードの交換を処理中です。",
    err_in_flight_todo: "少し待ってから、もう一度確認してください。二重に交換されることはありません。",
    err_unavailable: "ただいま混み合っているか、一時的に利用できません。",
    err_unavailable_todo: "しばらく待ってから、もう一度お試しください。",
    err_stock: "このギフトは一時的に在庫がありません。",
    err_throttled: "短時間に多くの操作がありました。",
    err_throttled_todo: "しばらく待ってから、もう一度お試しください。",
    err_session: "ページの有効期限が切れたか、Cookieが無効になっています。",
    err_session_todo: "Cookieを有効にして、最初からやり直してください。",
    err_internal: "予期しないエラーが発生しました。",
    err_internal_todo: "しばらく待ってから、もう一度お試しください。続く場合はお手紙に記載の窓口にお問い合わせください。",
    err_not_found: "ページが見つかりません。",
    retry_after: "目安:",
    retry: "もう一度試す",
    privacy_note: "ギフトコードとログインキーはこのサイトのURLやCookieには保存されません。",
};

/// English.
pub static EN: Texts = Texts {
    site: "Apology gift portal",
    switch_label: "言語",
    switch_name: "日本語",
    start_title: "Receive your gift",
    start_intro: "Enter the gift code and login key printed on your letter. Upper or lower case, hyphens and spaces do not matter.",
    code_label: "Gift code",
    code_hint: "16 characters (e.g. AB12-CD34-EF56-GH78)",
    key_label: "Login key",
    key_hint: "8 characters (e.g. JK90-MN12)",
    select_title: "Exchange your select gift",
    select_intro: "Enter your select gift's gift ID and management number, then choose e-money or a gift code.",
    gift_id_label: "Gift ID",
    gift_id_hint: "16 characters (e.g. AB12-CD34-EF56-GH78)",
    mgmt_label: "Management number",
    mgmt_hint: "8 characters (e.g. JK90-MN12)",
    next: "Next",
    check: "Continue",
    select_link: "Have a select gift? Exchange it here",
    value: "Value",
    deadline: "Exchange by",
    options_title: "Choose your gift",
    options_legend: "Your gift",
    mailed_note: "Mailed gifts need a postal address.",
    address_label: "Postal address (mailed gifts only)",
    address_hint: "Postal code, address and name, as you would write them on an envelope.",
    email_label: "Email address (optional)",
    email_hint: "Used to confirm it is you if you ask us to show your gift again.",
    prefs_legend: "Your data and our mail",
    delete_data: "Delete my personal data after the exchange",
    stop_mail: "Send me no more mail",
    confirm_title: "Check and confirm",
    confirm_intro: "Your code will be exchanged as below. This cannot be undone.",
    chosen: "Gift",
    none: "none",
    yes: "yes",
    no: "no",
    confirm: "Exchange now",
    change: "Change my choice",
    result_title: "Your gift is ready",
    already_note: "This gift code was already exchanged. Here is what you received.",
    gift_code: "Gift code",
    pin: "PIN",
    gift_code_howto: "Enter this code on the site below to use it. Keep this page or write the code down.",
    redeem_at: "Use it at",
    usable_until: "Valid until",
    gift_id: "Gift ID",
    mgmt_number: "Management number",
    gift_id_howto: "This is a select gift. Keep the gift ID and management number, and exchange them for e-money or a gift code on the select gift page.",
    use_select_now: "Exchange the select gift now",
    shipment_ref: "Shipment reference",
    shipment_waiting: "We will mail it to the address you gave. Shipping may take a few weeks.",
    shipment_shipped: "Mailed on",
    tracking: "Tracking number",
    receipt: "Donation receipt",
    donation_thanks: "The full value was donated. Thank you.",
    reference: "Reference",
    come_back: "Enter the same gift code and login key at any time to see this again.",
    pending_title: "Your exchange is being processed",
    pending_body: "We are waiting for the gift to be issued. Your code will never be exchanged twice. Please check again in a moment.",
    check_again: "Check again",
    failed_title: "This gift could not be issued",
    failed_body: "The gift's provider refused it. Your gift code is still unused: please choose another gift.",
    choose_again: "Choose again",
    error_title: "Please check",
    start_over: "Start over",
    err_code_format: "A gift code has 16 characters: 0-9 and A-Z (no U).",
    err_code_check: "The gift code seems to have a typo. Please compare it with your letter.",
    err_key_format: "A login key has 8 characters: 0-9 and A-Z (no U).",
    err_key_check: "The login key seems to have a typo. Please compare it with your letter.",
    err_required: "Please fill this in.",
    err_choose_option: "Please choose a gift.",
    err_address: "Please enter a postal address of 4-400 characters and at most 8 lines.",
    err_email: "This email address does not look right.",
    err_mismatch: "The gift code or login key is not right. Please compare them with your letter and try again. Too many wrong tries lock the code for a while.",
    err_locked: "This gift code is locked for a while after too many wrong login keys.",
    err_locked_until: "Unlocked at:",
    err_expired: "The deadline of this gift code has passed.",
    err_expired_todo: "It can no longer be exchanged. For questions, contact the desk named in your letter.",
    err_void: "This gift code is no longer valid.",
    err_void_todo: "Please contact the desk named in your letter.",
    err_in_flight: "An exchange of this gift code is in progress.",
    err_in_flight_todo: "Please check again in a moment. It will never be exchanged twice.",
    err_unavailable: "The service is busy or temporarily unavailable.",
    err_unavailable_todo: "Please wait a little and try again.",
    err_stock: "This gift is temporarily out of stock.",
    err_throttled: "Too many attempts in a short time.",
    err_throttled_todo: "Please wait a little and try again.",
    err_session: "This page has expired, or cookies are turned off.",
    err_session_todo: "Please allow cookies for this site and start over.",
    err_internal: "Something went wrong on our side.",
    err_internal_todo: "Please try again later. If it keeps happening, contact the desk named in your letter.",
    err_not_found: "Page not found.",
    retry_after: "About:",
    retry: "Try again",
    privacy_note: "Your gift code and login key are never put in this site's addresses (URLs) or cookies.",
};

/// Localised names of the demo options (others show giftxd's name).
pub fn option_name(lang: Lang, option_id: &str, fallback: &str) -> String {
    let ja = match option_id {
        "select-gift" => "電子マネー選べるギフト(500円分)",
        "book-card" => "図書カード(郵送)",
        "donation" => "こども基金への寄付",
        "emoney-a" => "電子マネーA ギフトコード",
        "emoney-b" => "電子マネーB バリュー",
        "giftcode-c" => "ギフトコードC",
        _ => return fallback.to_owned(),
    };
    match lang {
        Lang::Ja => ja.to_owned(),
        Lang::En => fallback.to_owned(),
    }
}

/// An amount as a holder reads it (`500円`, `¥500`; other currencies in
/// minor units with their code).
pub fn money(lang: Lang, currency: &str, minor_units: i64) -> String {
    match (currency, lang) {
        ("JPY", Lang::Ja) => format!("{}円", group(minor_units)),
        ("JPY", Lang::En) => format!("¥{}", group(minor_units)),
        _ => format!("{} {currency} (minor units)", group(minor_units)),
    }
}

fn group(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Seconds since the epoch as Japan time (UTC+9, no daylight saving).
pub fn datetime(lang: Lang, unix_seconds: i64) -> String {
    let (y, mo, d, h, mi) = civil(unix_seconds + 9 * 3600);
    match lang {
        Lang::Ja => format!("{y}年{mo}月{d}日 {h:02}:{mi:02}(日本時間)"),
        Lang::En => {
            const M: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let m = M[usize::try_from(mo - 1).unwrap_or(0).min(11)];
            format!("{d} {m} {y}, {h:02}:{mi:02} Japan time")
        }
    }
}

/// (year, month, day, hour, minute) of seconds since the epoch (UTC).
fn civil(secs: i64) -> (i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, (rem % 3600) / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_wins_then_the_browser_preference_then_japanese() {
        assert_eq!(Lang::negotiate(Some("en"), Some("ja")), Lang::En);
        assert_eq!(
            Lang::negotiate(Some("xx"), Some("en-US,en;q=0.9")),
            Lang::En
        );
        assert_eq!(
            Lang::negotiate(None, Some("fr, en;q=0.5, ja;q=0.8")),
            Lang::Ja
        );
        assert_eq!(Lang::negotiate(None, Some("fr")), Lang::Ja);
        assert_eq!(Lang::negotiate(None, None), Lang::Ja);
        assert_eq!(Lang::negotiate(None, Some("ja;q=0, en")), Lang::En);
    }

    #[test]
    fn dates_are_japan_time_and_money_is_grouped() {
        // 2027-12-14T15:00:00Z is midnight of the 15th in Japan.
        assert_eq!(
            datetime(Lang::Ja, 1_828_796_400),
            "2027年12月15日 00:00(日本時間)"
        );
        assert_eq!(
            datetime(Lang::En, 1_828_796_400),
            "15 Dec 2027, 00:00 Japan time"
        );
        assert_eq!(money(Lang::Ja, "JPY", 1_500), "1,500円");
        assert_eq!(money(Lang::En, "JPY", 500), "¥500");
    }
}
