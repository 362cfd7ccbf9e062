//! The essential-services catalog: the shipped file, its validation, and the
//! operator's extension or replacement.

#![allow(clippy::unwrap_used)]

use sandgate_policy::{Catalog, DomainPattern, ErrorCode, BUILTIN_CATALOG};

/// The categories of the reference document and how many names each lists
/// (the names themselves are in `catalog/essential-services.toml`). The
/// reference's own platform host is not ours: the operator adds its own.
const EXPECTED: &[(&str, &str, usize)] = &[
    ("npm", "NPM", 13),
    ("git", "Git", 10),
    ("python", "Python", 4),
    ("ubuntu-debian", "Ubuntu/Debian", 6),
    ("cdn", "CDN", 4),
    ("ai-ml", "AI/ML", 7),
    ("docker", "Docker", 17),
    ("maven", "Maven", 2),
    ("google-fonts", "Google Fonts", 2),
    ("aws-s3", "AWS S3", 7),
    ("platform", "Platform", 0),
];

#[test]
fn the_shipped_catalog_has_the_reference_categories_and_counts() {
    let catalog = Catalog::builtin();
    let got: Vec<_> = catalog
        .categories()
        .iter()
        .map(|c| (c.id.as_str(), c.title.as_str(), c.hosts.len()))
        .collect();
    assert_eq!(got, EXPECTED);
}

#[test]
fn the_shipped_file_is_written_in_reverse_label_order() {
    // A host in the file reads top-level domain first: its first label is a
    // known top-level domain of the reference's names.
    let catalog = Catalog::builtin();
    for (_, pattern) in catalog.names() {
        let reversed = pattern.to_reversed();
        assert!(
            BUILTIN_CATALOG.contains(&format!("\"{reversed}\"")),
            "{reversed}"
        );
        let first = reversed.split('.').next().unwrap();
        assert!(
            ["com", "org", "io", "net", "ai", "dev"].contains(&first),
            "{reversed}"
        );
    }
}

#[test]
fn catalog_names_match_exactly_not_their_subdomains() {
    let catalog = Catalog::builtin();
    let (category, pattern) = catalog.names().next().unwrap();
    let name = pattern.base().as_str();
    let found = catalog.matcher().find(name).unwrap();
    assert_eq!(
        catalog
            .category(match found.value {
                sandgate_policy::Rule::Essential(i) => i,
                other => panic!("{other:?}"),
            })
            .unwrap()
            .id,
        category.id
    );
    assert!(catalog.matcher().find(&name.to_uppercase()).is_some());
    assert!(catalog.matcher().find(&format!("evil.{name}")).is_none());
    assert!(catalog
        .matcher()
        .find(&format!("{name}.evil.example"))
        .is_none());
}

#[test]
fn an_operator_file_extends_the_catalog() {
    let base = Catalog::builtin();
    let existing = base.category_by_id("python").unwrap().hosts[0].to_reversed();
    let text = format!(
        r#"
        version = 1
        mode = "extend"
        [[category]]
        id = "platform"
        hosts = ["test.sandgate.api"]
        [[category]]
        id = "python"
        hosts = ["test.mirror.pypi", "{existing}"]
        [[category]]
        id = "internal"
        title = "Internal mirrors"
        hosts = ["test.corp.*"]
        "#
    );
    let catalog = base.with_operator_file(&text, "operator.toml").unwrap();
    assert_eq!(catalog.category_by_id("platform").unwrap().hosts.len(), 1);
    let python = catalog.category_by_id("python").unwrap();
    assert_eq!(python.title, "Python");
    assert_eq!(
        python.hosts.len(),
        base.category_by_id("python").unwrap().hosts.len() + 1
    );
    let internal = catalog.category_by_id("internal").unwrap();
    assert_eq!(
        internal.hosts,
        vec![DomainPattern::parse("*.corp.test").unwrap()]
    );
    assert!(catalog.matcher().find("api.sandgate.test").is_some());
    assert!(catalog.matcher().find("a.b.corp.test").is_some());
    assert!(catalog.matcher().find("corp.test").is_none());
    assert_eq!(catalog.names().count(), base.names().count() + 3);
}

#[test]
fn an_operator_file_can_replace_the_catalog() {
    let text = r#"
        version = 1
        mode = "replace"
        [[category]]
        id = "mirror"
        title = "Our mirror"
        hosts = ["test.mirror"]
    "#;
    let catalog = Catalog::builtin()
        .with_operator_file(text, "operator.toml")
        .unwrap();
    assert_eq!(catalog.categories().len(), 1);
    assert_eq!(catalog.names().count(), 1);
    let npm = Catalog::builtin().category_by_id("npm").unwrap().hosts[0]
        .base()
        .to_string();
    assert!(catalog.matcher().find(&npm).is_none());
}

#[test]
fn invalid_catalogs_are_refused_naming_the_fault() {
    let cases = [
        ("version = 2", "version 2"),
        ("[[category]]\nid = \"x\"\ntitle = \"X\"", "version"),
        ("version = 1\n[[category]]\nid = \"Bad Id\"\ntitle = \"X\"", "Bad Id"),
        ("version = 1\n[[category]]\nid = \"x\"", "no title"),
        ("version = 1\n[[category]]\nid = \"x\"\ntitle = \"X\"\nhosts = [\"com.example..www\"]", "com.example..www"),
        ("version = 1\n[[category]]\nid = \"x\"\ntitle = \"X\"\nhosts = [\"Com.Example\"]", "write \"com.example\""),
        ("version = 1\n[[category]]\nid = \"x\"\ntitle = \"X\"\nhosts = [\"*.example.com\"]", "*.example.com"),
        ("version = 1\n[[category]]\nid = \"x\"\ntitle = \"X\"\nhosts = [\"com.example\", \"com.example\"]", "appears twice"),
        ("version = 1\n[[category]]\nid = \"x\"\ntitle = \"X\"\n[[category]]\nid = \"x\"\ntitle = \"Y\"", "appears twice"),
        ("version = 1\n[[category]]\nid = \"x\"\ntitle = \"X\"\nnames = []", "names"),
        ("version = 1\nmode = \"extend\"", "mode"),
    ];
    for (text, needle) in cases {
        let err = Catalog::from_toml(text, "test.toml").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidCatalog, "{text}");
        assert!(err.message.contains(needle), "{text}: {}", err.message);
        assert!(err.message.contains("test.toml"), "{}", err.message);
    }
    let err = Catalog::builtin()
        .with_operator_file("version = 1\nmode = \"merge\"", "operator.toml")
        .unwrap_err();
    assert!(err.message.contains("merge"), "{}", err.message);
    let err = Catalog::builtin()
        .with_operator_file(
            "version = 1\n[[category]]\nid = \"new\"\nhosts = []",
            "operator.toml",
        )
        .unwrap_err();
    assert!(err.message.contains("no title"), "{}", err.message);
}
