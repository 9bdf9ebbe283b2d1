//! Parsing what the user types.

/// One line of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/peers`: list online peers with their verification state.
    Peers,
    /// `/to <peer>`: talk to `peer` from now on.
    To(String),
    /// `/fp [peer]`: show our fingerprint, or a peer's.
    Fingerprint(Option<String>),
    /// `/accept <peer>`: accept a peer's changed identity key, the one whose fingerprint was shown.
    Accept(String),
    /// `/ask`: start the server's demo conversation.
    Ask,
    /// `/answer [#n] <text>`: answer pending server question `#n` (or the only pending one).
    Answer {
        /// The question's number, as shown.
        tag: Option<u32>,
        /// The answer.
        text: String,
    },
    /// `/dismiss [#n]`: drop pending server question `#n` (or the only pending one) unanswered.
    Dismiss(Option<u32>),
    /// `/reconnect`: connect again after the connection was given up or taken over.
    Reconnect,
    /// `/reply <n> <text>`: answer message `#n` of the current conversation, quoting it.
    Reply {
        /// The message's number, as shown.
        n: i64,
        /// The answer.
        text: String,
    },
    /// `/edit <text>`: replace the text of your last message in the current conversation.
    Edit(String),
    /// `/delete [n]`: delete your message `#n` (or your last one) for everyone.
    Delete(Option<i64>),
    /// `/react <n> <emoji>` (or `/unreact`): react to message `#n` (or take the reaction back).
    React {
        /// The message's number, as shown.
        n: i64,
        /// The emoji.
        emoji: String,
        /// `/unreact`.
        remove: bool,
    },
    /// `/search <words>`: the messages of the local history containing every word.
    Search(String),
    /// `/group new <name> <id,id…>`: create a group with these members and talk in it.
    GroupNew {
        /// The group's name (may contain spaces).
        name: String,
        /// The members' ids.
        members: Vec<String>,
    },
    /// `/group add <id,id…>`: add members to the current group.
    GroupAdd(Vec<String>),
    /// `/group remove <id,id…>`: remove members from the current group.
    GroupRemove(Vec<String>),
    /// `/group leave`: leave the current group.
    GroupLeave,
    /// `/group rename <name>`: rename the current group.
    GroupRename(String),
    /// `/group heal`: rotate your keys in the current group now (after a suspected compromise).
    GroupHeal,
    /// `/group heal all`: rotate your keys in every group and 1:1 conversation now (after a
    /// suspected compromise of this device).
    HealAll,
    /// `/groups`: list your groups, numbered.
    Groups,
    /// `/g <n|name>`: talk in group `#n` (as listed by `/groups`) or the group of that name.
    GroupPick(String),
    /// `/members`: the current group's members with their fingerprints.
    Members,
    /// `/info`: the current conversation and the envelope its messages travel in.
    Info,
    /// `/send <path>`: send a file to the current peer (encrypted, resumable).
    SendFile(String),
    /// `/get <n> [path]`: save the file of message `#n` (default: its name, in the current
    /// directory).
    GetFile {
        /// The message's number, as shown.
        n: i64,
        /// Where to save it.
        path: Option<String>,
    },
    /// `/get g<n> [path]`: save group file `g<n>` (as numbered when it was shown).
    GetGroupFile {
        /// Its number, as shown (`g3` → 3).
        n: u64,
        /// Where to save it.
        path: Option<String>,
    },
    /// `/transfers`: the file transfers and how far they are.
    Transfers,
    /// `/link <id> <device>` (on the new device): start linking it to `id` as `device`; shows
    /// the code.
    LinkStart {
        /// The id to join.
        id: String,
        /// This device's name.
        device: String,
    },
    /// `/link <code>` (on a device of the id): the code the new device shows.
    LinkCode(String),
    /// `/approve` (true) or `/refuse` (false): answer the new device whose fingerprint was shown.
    LinkApprove(bool),
    /// `/devices`: this id's devices.
    Devices,
    /// `/device remove <device>`: take a device off this id's device list.
    DeviceRemove(String),
    /// `/help`.
    Help,
    /// `/quit`.
    Quit,
    /// A plain line: a message to the current peer (never an answer to a server question).
    Text(String),
    /// Nothing (blank line).
    Empty,
    /// A command we do not know, or missing its argument.
    Invalid(String),
}

/// The help text.
pub const HELP: &str = "\
commands:
  /peers          list online peers (✓ = verified identity)
  /to <peer>      talk to <peer>; plain lines are sent to it
  /fp [peer]      show your fingerprint, or <peer>'s, to compare out of band
  /info           the current conversation and its envelope (mls, lattice-v1, ml-kem-aes)
  /accept <peer>  trust <peer>'s new key with the fingerprint shown as \"now:\" (compare it first!)
  /ask            start the server's demo conversation
  /answer [#n] <answer>  answer the server's question #n (the number it was shown with;
                  optional when only one is waiting)
  /dismiss [#n]   drop the server's question #n unanswered
  /reply <n> <text>  answer message #n (the number shown in front of it), quoting it
  /edit <text>    replace the text of your last message to the current peer
  /delete [n]     delete your message #n (default: your last one) for everyone
  /react <n> <emoji>    react to message #n; /unreact <n> <emoji> takes it back
  /send <path>    send a file to the current peer or group (end-to-end encrypted; resumes after a restart)
  /get <n> [path] save the file of message #n (default: its name, in the current directory)
  /get g<n> [path] save group file g<n> (as numbered when it was shown)
  /transfers      the file transfers and how far they are
  /search <words> messages of your local history containing every word (all conversations)
  /group new <name> <id,id…>  create a group (end-to-end encrypted with MLS) and talk in it
  /groups         list your groups (#n); /g <n|name> talks in one (plain lines go to it)
  /members        the current group's members with their fingerprints
  /group add <id,id…> | remove <id,id…> | rename <name> | leave   change the current group
  /group heal     rotate your keys in the current group now (after a suspected compromise)
  /group heal all rotate your keys in every group and 1:1 conversation now
  /link <id> <device>  (new device) link it to <id> as <device>: shows a code and a fingerprint;
                  once linked it is saved (--device-file) and runs as that device (MLS only)
  /link <code>    (a device of the id) enter the code the new device shows; then compare the
                  fingerprint and /approve (or /refuse). History before linking is not shared
  /devices        this id's devices; /device remove <device> takes one off the list
  /reconnect      connect again after DISCONNECTED (takes the session back from another device)
  /help           this text
  /quit           leave
plain lines only ever go to the peer picked with /to, never to the server";

/// Parses one input line.
pub fn parse(line: &str) -> Command {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Command::Empty;
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Command::Text(line.to_owned());
    };
    // `//text` sends a line starting with a slash.
    if rest.starts_with('/') {
        return Command::Text(rest.to_owned());
    }
    let mut parts = rest.split_whitespace();
    let name = parts.next().unwrap_or_default();
    // `name` is the first word of `rest` (after any leading blanks); the rest of the line as typed.
    let args = rest
        .trim_start()
        .get(name.len()..)
        .unwrap_or_default()
        .trim();
    match name {
        "answer" | "a" => return parse_answer(args),
        "reply" | "r" => {
            return parse_numbered("/reply <n> <text>", args, |n, text| Command::Reply {
                n,
                text,
            })
        }
        "react" | "unreact" => {
            let remove = name == "unreact";
            return parse_numbered("/react <n> <emoji>", args, |n, emoji| Command::React {
                n,
                emoji,
                remove,
            });
        }
        "edit" | "e" if args.is_empty() => {
            return Command::Invalid("missing the new text: /edit <text>".into())
        }
        "edit" | "e" => return Command::Edit(args.to_owned()),
        "delete" if args.is_empty() => return Command::Delete(None),
        "delete" => {
            return match parse_tag(args) {
                Some(n) => Command::Delete(Some(i64::from(n))),
                None => Command::Invalid(format!("not a message number: {args} (e.g. 12)")),
            }
        }
        "search" | "s" if args.is_empty() => {
            return Command::Invalid("missing the words: /search <words>".into())
        }
        "search" | "s" => return Command::Search(args.to_owned()),
        "send" if args.is_empty() => {
            return Command::Invalid("missing the file: /send <path>".into())
        }
        "send" => return Command::SendFile(args.to_owned()),
        "get" => {
            let (n, path) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
            if let Some(g) = n.strip_prefix('g') {
                let Ok(n) = g.parse::<u64>() else {
                    return Command::Invalid(format!(
                        "not a group file number: {n:?} (use /get g<n> [path])"
                    ));
                };
                let path = path.trim();
                return Command::GetGroupFile {
                    n,
                    path: (!path.is_empty()).then(|| path.to_owned()),
                };
            }
            let Some(n) = parse_tag(n).map(i64::from) else {
                return Command::Invalid(format!(
                    "not a message number: {n:?} (use /get <n> [path])"
                ));
            };
            let path = path.trim();
            return Command::GetFile {
                n,
                path: (!path.is_empty()).then(|| path.to_owned()),
            };
        }
        "transfers" => return Command::Transfers,
        "link" => {
            let words: Vec<&str> = args.split_whitespace().collect();
            return match words.as_slice() {
                [code] => Command::LinkCode((*code).to_owned()),
                [id, device] => Command::LinkStart {
                    id: (*id).to_owned(),
                    device: (*device).to_owned(),
                },
                _ => Command::Invalid("usage: /link <id> <device> | /link <code>".into()),
            };
        }
        "approve" => return Command::LinkApprove(true),
        "refuse" => return Command::LinkApprove(false),
        "devices" => return Command::Devices,
        "device" => {
            return match args.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["remove", d] => Command::DeviceRemove((*d).to_owned()),
                _ => Command::Invalid("usage: /device remove <device>".into()),
            }
        }
        "group" => return parse_group(args),
        "groups" => return Command::Groups,
        "members" => return Command::Members,
        "g" if args.is_empty() => {
            return Command::Invalid("missing the group: /g <n|name> (see /groups)".into())
        }
        "g" => return Command::GroupPick(args.to_owned()),
        _ => {}
    }
    let arg = parts.next().map(str::to_owned);
    match (name, arg) {
        ("peers" | "p", _) => Command::Peers,
        ("info" | "i", _) => Command::Info,
        ("to" | "t", Some(p)) => Command::To(p),
        ("fp", p) => Command::Fingerprint(p),
        ("accept", Some(p)) => Command::Accept(p),
        ("ask", _) => Command::Ask,
        ("reconnect", _) => Command::Reconnect,
        ("dismiss", None) => Command::Dismiss(None),
        ("dismiss", Some(t)) => match parse_tag(&t) {
            Some(tag) => Command::Dismiss(Some(tag)),
            None => Command::Invalid(format!("not a question number: {t} (e.g. #1)")),
        },
        ("help" | "h" | "?", _) => Command::Help,
        ("quit" | "q" | "exit", _) => Command::Quit,
        (other, _) => Command::Invalid(format!("unknown command or missing argument: /{other}")),
    }
}

/// `a,b, c` as ids (empty parts dropped).
fn id_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The arguments of `/group`.
fn parse_group(args: &str) -> Command {
    let (sub, rest) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
    let rest = rest.trim();
    match (sub, rest.is_empty()) {
        ("new", false) => match rest.rsplit_once(char::is_whitespace) {
            // `name a, b` would name the group "name a," with b alone: the ids are one word.
            Some((name, ids)) if !id_list(ids).is_empty() && !name.trim_end().ends_with(',') => Command::GroupNew {
                name: name.trim().to_owned(),
                members: id_list(ids),
            },
            _ => Command::Invalid("usage: /group new <name> <id,id…>".into()),
        },
        ("add", false) => Command::GroupAdd(id_list(rest)),
        ("remove", false) => Command::GroupRemove(id_list(rest)),
        ("rename", false) => Command::GroupRename(rest.to_owned()),
        ("leave", true) => Command::GroupLeave,
        ("heal", true) => Command::GroupHeal,
        ("heal", false) if rest == "all" => Command::HealAll,
        _ => Command::Invalid(
            "usage: /group new <name> <id,id…> | add <id,…> | remove <id,…> | rename <name> | leave | heal [all]"
                .into(),
        ),
    }
}

/// `#n` (or `n`): a question's number.
fn parse_tag(word: &str) -> Option<u32> {
    word.strip_prefix('#').unwrap_or(word).parse().ok()
}

/// `<n> <text>` (or `#n <text>`): a message number and the rest of the line.
fn parse_numbered(usage: &str, args: &str, make: impl FnOnce(i64, String) -> Command) -> Command {
    let (n, text) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
    let Some(n) = parse_tag(n).map(i64::from) else {
        return Command::Invalid(format!("not a message number: {n:?} (use {usage})"));
    };
    let text = text.trim();
    if text.is_empty() {
        return Command::Invalid(format!("missing the text: {usage}"));
    }
    make(n, text.to_owned())
}

/// The argument of `/answer`: an optional `#n`, then the answer (the rest of the line as typed).
fn parse_answer(rest: &str) -> Command {
    let (tag, text) = match rest.strip_prefix('#') {
        Some(after) => {
            let (n, text) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
            match n.parse() {
                Ok(n) => (Some(n), text.trim()),
                Err(_) => {
                    return Command::Invalid(format!("not a question number: #{n} (e.g. #1)"))
                }
            }
        }
        None => (None, rest),
    };
    if text.is_empty() {
        return Command::Invalid("missing the answer: /answer [#n] <answer>".into());
    }
    Command::Answer {
        tag,
        text: text.to_owned(),
    }
}

/// Interprets an answer to a question: a confirm takes y/yes/n/no, a choice takes the option's
/// number or its text, free text is taken as is. `None` if the answer does not fit.
pub fn answer(
    kind: Option<lattice_protocol::QuestionKind>,
    options: Option<&[String]>,
    line: &str,
) -> Option<serde_json::Value> {
    use lattice_protocol::QuestionKind;
    let line = line.trim();
    match kind {
        Some(QuestionKind::Confirm) => match line.to_ascii_lowercase().as_str() {
            "y" | "yes" | "true" => Some(true.into()),
            "n" | "no" | "false" => Some(false.into()),
            _ => None,
        },
        Some(QuestionKind::Choice) => {
            let options = options.unwrap_or_default();
            if let Ok(n) = line.parse::<usize>() {
                return options.get(n.checked_sub(1)?).cloned().map(Into::into);
            }
            options
                .iter()
                .find(|o| o.eq_ignore_ascii_case(line))
                .cloned()
                .map(Into::into)
        }
        _ => Some(line.to_owned().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lattice_protocol::QuestionKind;

    #[test]
    fn parses_the_device_commands() {
        assert_eq!(
            parse("/link alice laptop"),
            Command::LinkStart {
                id: "alice".into(),
                device: "laptop".into()
            }
        );
        assert_eq!(
            parse("/link AB12-CD34"),
            Command::LinkCode("AB12-CD34".into())
        );
        assert!(matches!(parse("/link"), Command::Invalid(_)));
        assert!(matches!(parse("/link a b c"), Command::Invalid(_)));
        assert_eq!(parse("/approve"), Command::LinkApprove(true));
        assert_eq!(parse("/refuse"), Command::LinkApprove(false));
        assert_eq!(parse("/devices"), Command::Devices);
        assert_eq!(
            parse("/device remove laptop"),
            Command::DeviceRemove("laptop".into())
        );
        assert!(matches!(parse("/device laptop"), Command::Invalid(_)));
    }

    #[test]
    fn parses_the_file_commands() {
        assert_eq!(
            parse("/send  my photo.jpg "),
            Command::SendFile("my photo.jpg".into())
        );
        assert!(matches!(parse("/send"), Command::Invalid(_)));
        assert_eq!(parse("/get 3"), Command::GetFile { n: 3, path: None });
        assert_eq!(
            parse("/get #3 /tmp/a b.pdf"),
            Command::GetFile {
                n: 3,
                path: Some("/tmp/a b.pdf".into())
            }
        );
        assert!(matches!(parse("/get x"), Command::Invalid(_)));
        assert_eq!(
            parse("/get g2 /tmp/x"),
            Command::GetGroupFile {
                n: 2,
                path: Some("/tmp/x".into())
            }
        );
        assert!(matches!(parse("/get gx"), Command::Invalid(_)));
        assert!(matches!(parse("/get"), Command::Invalid(_)));
        assert_eq!(parse("/transfers"), Command::Transfers);
    }

    #[test]
    fn parses_the_group_commands() {
        assert_eq!(
            parse("/group new the team alice, carol"),
            Command::Invalid("usage: /group new <name> <id,id…>".into()),
            "the ids are one word"
        );
        assert_eq!(
            parse("/group new the team alice,carol"),
            Command::GroupNew {
                name: "the team".into(),
                members: vec!["alice".into(), "carol".into()]
            }
        );
        assert_eq!(
            parse("/group add dan,,erin"),
            Command::GroupAdd(vec!["dan".into(), "erin".into()])
        );
        assert_eq!(
            parse("/group remove dan"),
            Command::GroupRemove(vec!["dan".into()])
        );
        assert_eq!(
            parse("/group rename a b"),
            Command::GroupRename("a b".into())
        );
        assert_eq!(parse("/group leave"), Command::GroupLeave);
        assert_eq!(parse("/group heal"), Command::GroupHeal);
        assert_eq!(parse("/group heal all"), Command::HealAll);
        assert!(matches!(parse("/group heal some"), Command::Invalid(_)));
        assert!(matches!(parse("/group leave now"), Command::Invalid(_)));
        assert!(matches!(parse("/group"), Command::Invalid(_)));
        assert!(matches!(parse("/group new x"), Command::Invalid(_)));
        assert_eq!(parse("/groups"), Command::Groups);
        assert_eq!(parse("/members"), Command::Members);
        assert_eq!(parse("/g 2"), Command::GroupPick("2".into()));
        assert!(matches!(parse("/g"), Command::Invalid(_)));
    }

    #[test]
    fn parses_commands_and_text() {
        assert_eq!(parse("/peers"), Command::Peers);
        assert_eq!(parse("/info"), Command::Info);
        assert_eq!(parse("/to bob"), Command::To("bob".into()));
        assert_eq!(
            parse("/to"),
            Command::Invalid("unknown command or missing argument: /to".into())
        );
        assert_eq!(parse("/fp"), Command::Fingerprint(None));
        assert_eq!(parse("/fp bob"), Command::Fingerprint(Some("bob".into())));
        assert_eq!(parse("/accept bob"), Command::Accept("bob".into()));
        assert_eq!(parse("/quit"), Command::Quit);
        assert_eq!(parse("/reconnect"), Command::Reconnect);
        assert_eq!(parse("hello there\n"), Command::Text("hello there".into()));
        assert_eq!(
            parse("//not a command"),
            Command::Text("/not a command".into())
        );
        assert_eq!(parse("   "), Command::Empty);
        assert!(matches!(parse("/frobnicate"), Command::Invalid(_)));
    }

    #[test]
    fn answers_and_dismissals_are_explicit_commands() {
        assert_eq!(
            parse("/answer  hello  world "),
            Command::Answer {
                tag: None,
                text: "hello  world".into()
            }
        );
        assert_eq!(
            parse("/answer #3 2"),
            Command::Answer {
                tag: Some(3),
                text: "2".into()
            }
        );
        assert!(matches!(parse("/answer"), Command::Invalid(_)));
        assert!(matches!(parse("/answer #2"), Command::Invalid(_)));
        assert!(matches!(parse("/answer #x yes"), Command::Invalid(_)));
        assert_eq!(parse("/dismiss"), Command::Dismiss(None));
        assert_eq!(parse("/dismiss #4"), Command::Dismiss(Some(4)));
        assert!(matches!(parse("/dismiss four"), Command::Invalid(_)));
        // A plain line is a message, whatever it looks like.
        assert_eq!(parse("yes"), Command::Text("yes".into()));
        assert_eq!(parse("1"), Command::Text("1".into()));
    }

    #[test]
    fn parses_the_content_commands() {
        assert_eq!(
            parse("/reply 12  sounds  good "),
            Command::Reply {
                n: 12,
                text: "sounds  good".into()
            }
        );
        assert_eq!(
            parse("/reply #3 ok"),
            Command::Reply {
                n: 3,
                text: "ok".into()
            }
        );
        assert!(matches!(parse("/reply 3"), Command::Invalid(_)));
        assert!(matches!(parse("/reply x hi"), Command::Invalid(_)));
        assert_eq!(
            parse("/edit fixed typo"),
            Command::Edit("fixed typo".into())
        );
        assert!(matches!(parse("/edit"), Command::Invalid(_)));
        assert_eq!(parse("/delete"), Command::Delete(None));
        assert_eq!(parse("/delete 7"), Command::Delete(Some(7)));
        assert!(matches!(parse("/delete seven"), Command::Invalid(_)));
        assert_eq!(
            parse("/react 4 👍"),
            Command::React {
                n: 4,
                emoji: "👍".into(),
                remove: false
            }
        );
        assert_eq!(
            parse("/unreact 4 👍"),
            Command::React {
                n: 4,
                emoji: "👍".into(),
                remove: true
            }
        );
        assert!(matches!(parse("/react 4"), Command::Invalid(_)));
        assert_eq!(
            parse("/search launch  friday"),
            Command::Search("launch  friday".into())
        );
        assert!(matches!(parse("/search"), Command::Invalid(_)));
    }

    #[test]
    fn interprets_answers() {
        let opts = vec!["red".to_owned(), "blue".to_owned()];
        assert_eq!(
            answer(Some(QuestionKind::Confirm), None, "Y"),
            Some(true.into())
        );
        assert_eq!(answer(Some(QuestionKind::Confirm), None, "maybe"), None);
        assert_eq!(
            answer(Some(QuestionKind::Choice), Some(&opts), "2"),
            Some("blue".into())
        );
        assert_eq!(
            answer(Some(QuestionKind::Choice), Some(&opts), "RED"),
            Some("red".into())
        );
        assert_eq!(answer(Some(QuestionKind::Choice), Some(&opts), "0"), None);
        assert_eq!(
            answer(Some(QuestionKind::Choice), Some(&opts), "green"),
            None
        );
        assert_eq!(answer(None, None, " free text "), Some("free text".into()));
    }
}
