//! The pages, as maud templates (checked at compile time, every value
//! HTML-escaped). Every input has a label; errors are tied to their input
//! (`aria-describedby`, `aria-invalid`) and announced (`role=alert`).

use giftx_proto::v1 as pb;
use maud::{DOCTYPE, Markup, html};

use crate::i18n::{self, Lang};

/// A problem shown above a form or on its own page: what happened, what
/// to do.
#[derive(Clone, Debug, Default)]
pub struct Problem {
    /// What happened.
    pub message: String,
    /// What to do now.
    pub todo: String,
}

/// Per-field error messages.
pub type FieldErrors = Vec<(&'static str, String)>;

fn field_error<'a>(errors: &'a FieldErrors, field: &str) -> Option<&'a str> {
    errors
        .iter()
        .find(|(f, _)| *f == field)
        .map(|(_, m)| m.as_str())
}

/// The frame of every page.
pub fn layout(lang: Lang, title: &str, body: Markup) -> Markup {
    let t = lang.t();
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " | " (t.site) }
                link rel="stylesheet" href="/static/portal.css";
                link rel="icon" href="/static/favicon.svg" type="image/svg+xml";
            }
            body {
                header.site {
                    span.name { (t.site) }
                    // The switch: a link, so it works without JavaScript;
                    // it starts the journey over in the other language.
                    a href={ "/lang/" (lang.other().code()) } lang=(lang.other().code())
                        hreflang=(lang.other().code()) {
                        span.visually-hidden { (t.switch_label) ": " }
                        (t.switch_name)
                    }
                }
                main {
                    div.card {
                        h1 { (title) }
                        (body)
                    }
                }
                footer { p { (t.privacy_note) } }
            }
        }
    }
}

fn problem_box(p: Option<&Problem>) -> Markup {
    html! {
        @if let Some(p) = p {
            div.alert role="alert" {
                p { strong { (p.message) } }
                @if !p.todo.is_empty() { p { (p.todo) } }
            }
        }
    }
}

fn hidden_csrf(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// The first form: code + login key (or gift ID + management number).
pub fn start(
    lang: Lang,
    csrf: &str,
    select: bool,
    values: (&str, &str),
    errors: &FieldErrors,
    problem: Option<&Problem>,
) -> Markup {
    let t = lang.t();
    let (title, intro) = if select {
        (t.select_title, t.select_intro)
    } else {
        (t.start_title, t.start_intro)
    };
    let (code_label, code_hint, key_label, key_hint) = if select {
        (t.gift_id_label, t.gift_id_hint, t.mgmt_label, t.mgmt_hint)
    } else {
        (t.code_label, t.code_hint, t.key_label, t.key_hint)
    };
    let code_err = field_error(errors, "code");
    let key_err = field_error(errors, "login_key");
    layout(
        lang,
        title,
        html! {
            (problem_box(problem))
            p { (intro) }
            form method="post" action="/verify" novalidate {
                (hidden_csrf(csrf))
                @if select { input type="hidden" name="flow" value="select"; }
                label for="code" { (code_label) }
                p.hint id="code-hint" { (code_hint) }
                @if let Some(e) = code_err { p.error id="code-error" { (e) } }
                input.code type="text" id="code" name="code" value=(values.0)
                    autocomplete="off" autocapitalize="characters" spellcheck="false"
                    inputmode="text" maxlength="40" required
                    aria-invalid=(code_err.is_some())
                    aria-describedby={ "code-hint" @if code_err.is_some() { " code-error" } };
                label for="login_key" { (key_label) }
                p.hint id="login_key-hint" { (key_hint) }
                @if let Some(e) = key_err { p.error id="login_key-error" { (e) } }
                input.code type="text" id="login_key" name="login_key" value=(values.1)
                    autocomplete="off" autocapitalize="characters" spellcheck="false"
                    maxlength="24" required
                    aria-invalid=(key_err.is_some())
                    aria-describedby={ "login_key-hint" @if key_err.is_some() { " login_key-error" } };
                div { button type="submit" { (t.next) } }
            }
            @if !select {
                p { a href="/select" { (t.select_link) } }
            }
        },
    )
}

/// What the options page shows and keeps.
pub struct OptionsView<'a> {
    /// The code's status.
    pub status: &'a pb::CodeStatus,
    /// The sealed state.
    pub state: &'a str,
    /// Previous input, to fill the form again.
    pub prefill: Option<&'a crate::seal::Choice>,
    /// A problem to show.
    pub problem: Option<&'a Problem>,
}

fn value_and_deadline(lang: Lang, status: &pb::CodeStatus) -> Markup {
    let t = lang.t();
    html! {
        dl {
            @if let Some(m) = &status.face_value {
                dt { (t.value) }
                dd { (i18n::money(lang, &m.currency_code, m.minor_units)) }
            }
            @if let Some(ts) = &status.expire_time {
                dt { (t.deadline) }
                dd { (i18n::datetime(lang, ts.seconds)) }
            }
        }
    }
}

/// Choose an option (and address, email, preferences).
pub fn options(lang: Lang, csrf: &str, v: &OptionsView<'_>, errors: &FieldErrors) -> Markup {
    let t = lang.t();
    let chosen = v.prefill.map(|c| c.option_id.as_str()).unwrap_or_default();
    let opt_err = field_error(errors, "option_id");
    let addr_err = field_error(errors, "shipping_address");
    let mail_err = field_error(errors, "contact_email");
    let any_mailed = v.status.options.iter().any(|o| o.requires_shipping_address);
    layout(
        lang,
        t.options_title,
        html! {
            (problem_box(v.problem))
            (value_and_deadline(lang, v.status))
            form method="post" action="/choose" novalidate {
                (hidden_csrf(csrf))
                input type="hidden" name="state" value=(v.state);
                fieldset aria-describedby=[opt_err.map(|_| "option_id-error")] {
                    legend { (t.options_legend) }
                    @if let Some(e) = opt_err { p.error id="option_id-error" { (e) } }
                    @for o in &v.status.options {
                        @let id = format!("option-{}", o.option_id);
                        label.choice for=(id) {
                            input type="radio" id=(id) name="option_id" value=(o.option_id)
                                checked[chosen == o.option_id];
                            span {
                                (i18n::option_name(lang, &o.option_id, &o.display_name))
                            }
                        }
                    }
                }
                @if any_mailed {
                    p.hint { (t.mailed_note) }
                    label for="shipping_address" { (t.address_label) }
                    p.hint id="shipping_address-hint" { (t.address_hint) }
                    @if let Some(e) = addr_err { p.error id="shipping_address-error" { (e) } }
                    textarea id="shipping_address" name="shipping_address" rows="4"
                        maxlength="400" autocomplete="shipping street-address"
                        aria-invalid=(addr_err.is_some())
                        aria-describedby={ "shipping_address-hint" @if addr_err.is_some() { " shipping_address-error" } } {
                        (v.prefill.map(|c| c.shipping_address.as_str()).unwrap_or_default())
                    }
                }
                label for="contact_email" { (t.email_label) }
                p.hint id="contact_email-hint" { (t.email_hint) }
                @if let Some(e) = mail_err { p.error id="contact_email-error" { (e) } }
                input type="email" id="contact_email" name="contact_email" maxlength="254"
                    autocomplete="email"
                    value=(v.prefill.map(|c| c.contact_email.as_str()).unwrap_or_default())
                    aria-invalid=(mail_err.is_some())
                    aria-describedby={ "contact_email-hint" @if mail_err.is_some() { " contact_email-error" } };
                fieldset {
                    legend { (t.prefs_legend) }
                    label.check for="delete_personal_data" {
                        input type="checkbox" id="delete_personal_data" name="delete_personal_data"
                            value="on" checked[v.prefill.is_some_and(|c| c.delete_personal_data)];
                        span { (t.delete_data) }
                    }
                    label.check for="stop_mail" {
                        input type="checkbox" id="stop_mail" name="stop_mail" value="on"
                            checked[v.prefill.is_some_and(|c| c.stop_mail)];
                        span { (t.stop_mail) }
                    }
                }
                div { button type="submit" { (t.next) } }
            }
        },
    )
}

/// Check and confirm; the exchange form carries the request id.
pub fn confirm(
    lang: Lang,
    csrf: &str,
    status: &pb::CodeStatus,
    choice: &crate::seal::Choice,
    state: &str,
) -> Markup {
    let t = lang.t();
    let name = status
        .options
        .iter()
        .find(|o| o.option_id == choice.option_id)
        .map(|o| i18n::option_name(lang, &o.option_id, &o.display_name))
        .unwrap_or_else(|| choice.option_id.clone());
    let yn = |b: bool| if b { t.yes } else { t.no };
    let or_none = |s: &str| {
        if s.is_empty() {
            t.none.to_owned()
        } else {
            s.to_owned()
        }
    };
    layout(
        lang,
        t.confirm_title,
        html! {
            p { (t.confirm_intro) }
            (value_and_deadline(lang, status))
            dl {
                dt { (t.chosen) }
                dd { (name) }
                @if !choice.shipping_address.is_empty() {
                    dt { (t.address_label) }
                    dd { (choice.shipping_address) }
                }
                dt { (t.email_label) }
                dd { (or_none(&choice.contact_email)) }
                dt { (t.delete_data) }
                dd { (yn(choice.delete_personal_data)) }
                dt { (t.stop_mail) }
                dd { (yn(choice.stop_mail)) }
            }
            form method="post" action="/exchange" {
                (hidden_csrf(csrf))
                input type="hidden" name="state" value=(state);
                button type="submit" id="confirm" { (t.confirm) }
            }
            form method="post" action="/resume" {
                (hidden_csrf(csrf))
                input type="hidden" name="state" value=(state);
                button.secondary type="submit" { (t.change) }
            }
        },
    )
}

/// The exchange's result, for any state.
pub fn result(
    lang: Lang,
    csrf: &str,
    x: &pb::Exchange,
    state: &str,
    already: bool,
    status: Option<&pb::CodeStatus>,
) -> Markup {
    let t = lang.t();
    let reference = x.name.strip_prefix("exchanges/").unwrap_or(&x.name);
    let st = pb::ExchangeState::try_from(x.state).unwrap_or(pb::ExchangeState::Unspecified);
    let title = match st {
        pb::ExchangeState::Succeeded => t.result_title,
        pb::ExchangeState::Failed => t.failed_title,
        _ => t.pending_title,
    };
    let option_name = status
        .and_then(|s| s.options.iter().find(|o| o.option_id == x.option_id))
        .map_or_else(
            || i18n::option_name(lang, &x.option_id, &x.option_id),
            |o| i18n::option_name(lang, &o.option_id, &o.display_name),
        );
    layout(
        lang,
        title,
        html! {
            @if already && st == pb::ExchangeState::Succeeded {
                p.note { (t.already_note) }
            }
            @match st {
                pb::ExchangeState::Succeeded => {
                    dl {
                        dt { (t.chosen) }
                        dd { (option_name) }
                    }
                    @if let Some(d) = &x.deliverable { (deliverable(lang, d)) }
                    dl {
                        dt { (t.reference) }
                        dd { (reference) }
                    }
                    p { (t.come_back) }
                }
                pb::ExchangeState::Failed => {
                    p { (t.failed_body) }
                    form method="post" action="/resume" {
                        (hidden_csrf(csrf))
                        input type="hidden" name="state" value=(state);
                        button type="submit" { (t.choose_again) }
                    }
                }
                _ => {
                    p role="status" { (t.pending_body) }
                    form method="post" action=(if state.is_empty() { "/resume" } else { "/exchange" }) {
                        (hidden_csrf(csrf))
                        input type="hidden" name="state" value=(state);
                        button type="submit" { (t.check_again) }
                    }
                }
            }
            p { a href="/" { (t.start_over) } }
        },
    )
}

fn deliverable(lang: Lang, d: &pb::Deliverable) -> Markup {
    let t = lang.t();
    let kind = pb::DeliverableKind::try_from(d.kind).unwrap_or(pb::DeliverableKind::Unspecified);
    html! {
        @match kind {
            pb::DeliverableKind::GiftCode => {
                p { (t.gift_code_howto) }
                dl {
                    dt { (t.gift_code) }
                    dd { span.deliverable id="deliverable-code" { (d.code) } }
                    @if !d.pin.is_empty() {
                        dt { (t.pin) }
                        dd { span.deliverable id="deliverable-pin" { (d.pin) } }
                    }
                    (value_row(lang, d))
                    @if let Some(e) = &d.expire_time {
                        dt { (t.usable_until) }
                        dd { (i18n::datetime(lang, e.seconds)) }
                    }
                    @if !d.redeem_url.is_empty() {
                        dt { (t.redeem_at) }
                        dd { a href=(d.redeem_url) rel="noopener noreferrer" { (d.redeem_url) } }
                    }
                }
            }
            pb::DeliverableKind::GiftId => {
                p { (t.gift_id_howto) }
                dl {
                    dt { (t.gift_id) }
                    dd { span.deliverable id="deliverable-code" { (d.code) } }
                    dt { (t.mgmt_number) }
                    dd { span.deliverable id="deliverable-pin" { (d.pin) } }
                    (value_row(lang, d))
                    @if let Some(e) = &d.expire_time {
                        dt { (t.usable_until) }
                        dd { (i18n::datetime(lang, e.seconds)) }
                    }
                }
                p { a.button href="/select" { (t.use_select_now) } }
            }
            pb::DeliverableKind::Shipment => {
                dl {
                    dt { (t.shipment_ref) }
                    dd { span.deliverable id="deliverable-code" { (d.reference) } }
                    (value_row(lang, d))
                }
                @if let Some(s) = &d.ship_time {
                    p.note id="shipped" {
                        (t.shipment_shipped) " " (i18n::datetime(lang, s.seconds))
                        @if !d.tracking.is_empty() { br; (t.tracking) ": " (d.tracking) }
                    }
                } @else {
                    p id="shipment-waiting" { (t.shipment_waiting) }
                }
            }
            pb::DeliverableKind::DonationReceipt => {
                p { (t.donation_thanks) }
                dl {
                    dt { (t.receipt) }
                    dd { span.deliverable id="deliverable-code" { (d.reference) } }
                    (value_row(lang, d))
                }
            }
            pb::DeliverableKind::Unspecified => {
                dl {
                    dt { (t.reference) }
                    dd { span.deliverable id="deliverable-code" { (d.code) (d.reference) } }
                }
            }
        }
    }
}

fn value_row(lang: Lang, d: &pb::Deliverable) -> Markup {
    html! {
        @if let Some(m) = &d.value {
            dt { (lang.t().value) }
            dd { (i18n::money(lang, &m.currency_code, m.minor_units)) }
        }
    }
}

/// A problem on its own page; `retry` re-posts the same state.
pub fn problem(lang: Lang, csrf: &str, p: &Problem, retry: Option<(&str, &str)>) -> Markup {
    let t = lang.t();
    layout(
        lang,
        t.error_title,
        html! {
            (problem_box(Some(p)))
            @if let Some((action, state)) = retry {
                form method="post" action=(action) {
                    (hidden_csrf(csrf))
                    input type="hidden" name="state" value=(state);
                    button type="submit" { (t.retry) }
                }
            }
            p { a href="/" { (t.start_over) } }
        },
    )
}
