"""RecipientResolver: the RCPT-time rules, one by one."""

from __future__ import annotations

import re

import pytest

from hato.directory import (
    AliasFileError,
    AliasTable,
    Local,
    LocalDomain,
    NotLocal,
    RecipientResolver,
    Unknown,
)
from hato.model import Address

ORG = "example.org"


class Users:
    """A fake UserDirectory that records what it was asked."""

    def __init__(self, *addresses: str) -> None:
        self.accounts = {Address.parse(a) for a in addresses}
        self.asked: list[Address] = []

    def exists(self, address: Address) -> bool:
        self.asked.append(address)
        return address in self.accounts


def a(text: str) -> Address:
    return Address.parse(text)


def mailboxes(*texts: str) -> Local:
    return Local(tuple(a(t) for t in texts), ())


def resolver(
    *domains: LocalDomain,
    users: Users | None = None,
    alias_file: AliasTable | None = None,
    delimiter: str = "+",
) -> RecipientResolver:
    return RecipientResolver(
        domains or (LocalDomain(ORG),),
        users or Users("alice@example.org", "bob@example.org"),
        alias_file,
        delimiter,
    )


def test_not_local_domain() -> None:
    r = resolver()
    assert r.resolve(a("alice@example.net")) == NotLocal()
    assert not r.is_local_domain("example.net")
    assert r.is_local_domain("EXAMPLE.org")


def test_idn_domain_matches_in_both_spellings() -> None:
    r = resolver(LocalDomain("bücher.example"), users=Users("anna@bücher.example"))
    assert r.is_local_domain("xn--bcher-kva.example")
    assert r.resolve(Address("anna", "xn--bcher-kva.example")) == mailboxes("anna@bücher.example")


def test_user_is_its_mailbox_compared_lower_case() -> None:
    users = Users("alice@example.org")
    r = resolver(users=users)
    assert r.resolve(a("Alice@example.org")) == mailboxes("alice@example.org")
    assert users.asked == [a("alice@example.org")]


def test_unknown_local_part() -> None:
    assert resolver().resolve(a("carol@example.org")) == Unknown()


@pytest.mark.parametrize(
    "local",
    ["../../etc", "..", ".", ".hidden", "a/b", "a\\b", "a\x00b", "a\nb", "a\x7fb", "x" * 65, ""],
)
def test_unsafe_local_part_is_never_a_mailbox(local: str) -> None:
    # Even where every local part would be accepted, and where aliases match the name.
    domain = LocalDomain(ORG, accept_any=True, catch_all="alice", aliases={local or "x": ("bob",)})
    r = resolver(domain)
    assert r.resolve(Address(local, ORG)) == Unknown()


def test_quoted_local_part_traversal_from_the_wire() -> None:
    r = resolver(LocalDomain(ORG, accept_any=True))
    address = Address.parse('"../../../tmp/x"@example.org')
    assert address.local == "../../../tmp/x"
    assert r.resolve(address) == Unknown()


def test_sixty_four_octets_is_still_fine() -> None:
    r = resolver(LocalDomain(ORG, accept_any=True))
    assert r.resolve(Address("x" * 64, ORG)) == mailboxes(f"{'x' * 64}@{ORG}")


def test_config_alias_expands_to_users_and_forwards() -> None:
    domain = LocalDomain(ORG, aliases={"Team": ("alice", "BOB", "Ext@Remote.example", "alice")})
    result = resolver(domain).resolve(a("team@example.org"))
    assert result == Local(
        (a("alice@example.org"), a("bob@example.org")), (Address("Ext", "remote.example"),)
    )


def test_alias_recursion_across_local_domains() -> None:
    org = LocalDomain(ORG, aliases={"sales": ("team@example.net",)})
    net = LocalDomain("example.net", aliases={"team": ("lead",), "lead": ("alice@example.org",)})
    assert resolver(org, net).resolve(a("sales@example.org")) == mailboxes("alice@example.org")


def test_config_alias_before_alias_file() -> None:
    table = AliasTable.parse("info: bob\n")
    r = resolver(LocalDomain(ORG, aliases={"info": ("alice",)}), alias_file=table)
    assert r.resolve(a("info@example.org")) == mailboxes("alice@example.org")


def test_alias_file_plain_and_domain_keys() -> None:
    org = LocalDomain(ORG)
    net = LocalDomain("example.net")
    table = AliasTable.parse("info: alice@example.org\nsales@example.net: bob@example.org\n")
    r = resolver(org, net, alias_file=table)
    assert r.resolve(a("info@example.net")) == mailboxes("alice@example.org")
    assert r.resolve(a("info@example.org")) == mailboxes("alice@example.org")
    assert r.resolve(a("sales@example.net")) == mailboxes("bob@example.org")
    assert r.resolve(a("sales@example.org")) == Unknown()


def test_alias_file_key_for_a_foreign_domain_is_a_config_error() -> None:
    table = AliasTable.parse("info@elsewhere.example: alice\n", source="/etc/aliases")
    with pytest.raises(AliasFileError, match=r"/etc/aliases:1: .*not a local domain"):
        resolver(alias_file=table)


def test_user_wins_over_alias() -> None:
    r = resolver(LocalDomain(ORG, aliases={"alice": ("bob",)}))
    assert r.resolve(a("alice@example.org")) == mailboxes("alice@example.org")


def test_alias_loop_is_unknown() -> None:
    domain = LocalDomain(ORG, aliases={"a": ("b",), "b": ("c",), "c": ("a",)})
    assert resolver(domain).resolve(a("a@example.org")) == Unknown()


def test_alias_loop_keeps_the_other_targets() -> None:
    domain = LocalDomain(ORG, aliases={"list": ("list", "alice", "ghost")})
    result = resolver(domain).resolve(a("list@example.org"))
    # "list" met again is a loop, delivered through alice: only ghost leads nowhere.
    assert result == Local((a("alice@example.org"),), (), (a("ghost@example.org"),))


def test_dead_alias_targets_names_each_target_without_a_mailbox() -> None:
    domain = LocalDomain(ORG, aliases={"sales": ("alice", "bob"), "all": ("sales",)})
    table = AliasTable.parse("info: nobody, alice\n")
    users = Users("alice@example.org")
    dead = resolver(domain, users=users, alias_file=table).dead_alias_targets()
    assert dead == [
        (a("sales@example.org"), a("bob@example.org")),
        (a("info@example.org"), a("nobody@example.org")),
    ]


def test_depth_limit() -> None:
    chain = {f"a{i}": (f"a{i + 1}",) for i in range(20)}
    chain["a20"] = ("alice",)
    r = resolver(LocalDomain(ORG, aliases=chain))
    # aN expands 21 - N times before reaching alice; at most 10 expansions are followed.
    assert r.resolve(a("a15@example.org")) == mailboxes("alice@example.org")
    assert r.resolve(a("a11@example.org")) == mailboxes("alice@example.org")
    assert r.resolve(a("a10@example.org")) == Unknown()


def test_plus_tag_is_stripped() -> None:
    r = resolver()
    assert r.resolve(a("Alice+Lists@example.org")) == mailboxes("alice@example.org")
    assert r.resolve(a("alice+a+b@example.org")) == mailboxes("alice@example.org")
    assert r.resolve(a("+alice@example.org")) == Unknown()
    assert r.resolve(a("carol+x@example.org")) == Unknown()


def test_plus_tag_alias_and_exact_alias() -> None:
    domain = LocalDomain(ORG, aliases={"team": ("alice",), "team+ops": ("bob",)})
    r = resolver(domain)
    assert r.resolve(a("team+ops@example.org")) == mailboxes("bob@example.org")
    assert r.resolve(a("team+dev@example.org")) == mailboxes("alice@example.org")


def test_delimiter_configurable_and_off() -> None:
    assert resolver(delimiter="-").resolve(a("alice-x@example.org")) == mailboxes(
        "alice@example.org"
    )
    assert resolver(delimiter="+-").resolve(a("bob-x@example.org")) == mailboxes("bob@example.org")
    assert resolver(delimiter="").resolve(a("alice+x@example.org")) == Unknown()


def test_catch_all_local_part_and_address() -> None:
    r = resolver(LocalDomain(ORG, catch_all="bob"))
    assert r.resolve(a("anything@example.org")) == mailboxes("bob@example.org")
    assert r.resolve(a("alice@example.org")) == mailboxes("alice@example.org")
    remote = resolver(LocalDomain(ORG, catch_all="ops@remote.example"))
    assert remote.resolve(a("x@example.org")) == Local((), (a("ops@remote.example"),))


def test_catch_all_that_leads_nowhere_is_unknown() -> None:
    r = resolver(LocalDomain(ORG, catch_all="nobody"))
    assert r.resolve(a("x@example.org")) == Unknown()


def test_accept_any_and_its_order_after_catch_all() -> None:
    r = resolver(LocalDomain(ORG, accept_any=True))
    assert r.resolve(a("New.Person@example.org")) == mailboxes("new.person@example.org")
    both = resolver(LocalDomain(ORG, accept_any=True, catch_all="bob"))
    assert both.resolve(a("x@example.org")) == mailboxes("bob@example.org")


def test_accept_any_does_not_ask_the_users_when_the_answer_is_the_same() -> None:
    # On PostgreSQL "no such account" is a round trip every time (issue 16): a plain local
    # part of an accept_any domain is its own mailbox whether or not it is an account.
    users = Users("alice@example.org")
    r = resolver(LocalDomain(ORG, accept_any=True, aliases={"sales": ("bob",)}), users=users)
    assert r.resolve(a("x@example.org")) == mailboxes("x@example.org")
    assert r.resolve(a("alice@example.org")) == mailboxes("alice@example.org")
    assert users.asked == []
    # Where the answer would differ, the users are asked: a +tag, an alias, a role name,
    # and without wildcards (the sender's own addresses).
    assert r.resolve(a("alice+t@example.org")) == mailboxes("alice@example.org")
    assert r.resolve(a("sales@example.org")) == mailboxes("bob@example.org")
    assert r.resolve(a("abuse@example.org")) == mailboxes("postmaster@example.org")
    assert isinstance(r.resolve(a("x@example.org"), wildcards=False), Unknown)
    assert a("alice+t@example.org") in users.asked and a("x@example.org") in users.asked
    with_catch_all = Users()
    caught = resolver(LocalDomain(ORG, accept_any=True, catch_all="bob"), users=with_catch_all)
    assert caught.resolve(a("x@example.org")) == mailboxes("bob@example.org")
    assert a("x@example.org") in with_catch_all.asked


def test_postmaster_always_accepted() -> None:
    r = resolver()
    assert r.resolve(a("PostMaster@example.org")) == mailboxes("postmaster@example.org")
    assert r.resolve(a("postmaster+x@example.org")) == mailboxes("postmaster@example.org")


def test_postmaster_alias_wins_and_falls_back_when_it_leads_nowhere() -> None:
    good = AliasTable.parse("postmaster: alice\n")
    assert resolver(alias_file=good).resolve(a("postmaster@example.org")) == mailboxes(
        "alice@example.org"
    )
    dead = AliasTable.parse("postmaster: root\n")
    result = resolver(alias_file=dead).resolve(a("postmaster@example.org"))
    # root leads back to postmaster (a role name): not a dead end, postmaster's own mailbox.
    assert result == Local((a("postmaster@example.org"),), (), ())
    dead = AliasTable.parse("postmaster: ghost\n")
    result = resolver(alias_file=dead).resolve(a("postmaster@example.org"))
    assert result == Local((a("postmaster@example.org"),), (), (a("ghost@example.org"),))


def test_bad_config_targets_are_errors() -> None:
    with pytest.raises(ValueError, match=re.escape("'example.org': alias 'x': target '|cmd'")):
        resolver(LocalDomain(ORG, aliases={"x": ("|cmd",)}))
    with pytest.raises(ValueError, match="catch_all"):
        resolver(LocalDomain(ORG, catch_all="a b"))
    with pytest.raises(ValueError, match="configured twice"):
        resolver(LocalDomain(ORG), LocalDomain("Example.Org"))


def test_owns_its_address_tags_and_aliases_but_not_catch_all_or_others() -> None:
    r = resolver(
        LocalDomain(ORG, catch_all="alice", aliases={"sales": ("alice", "bob"), "ceo": ("bob",)})
    )
    alice = a("alice@example.org")
    assert r.owns(alice, a("alice@example.org"))
    assert r.owns(alice, a("Alice+news@example.org"))
    assert r.owns(alice, a("sales@example.org"))  # an alias that delivers to her
    assert not r.owns(alice, a("ceo@example.org"))  # an alias of someone else
    assert not r.owns(alice, a("bob@example.org"))
    assert not r.owns(alice, a("nobody@example.org"))  # would only reach her via catch-all
    assert not r.owns(alice, a("alice@example.net"))  # not a local domain
    assert r.resolve(a("nobody@example.org")) == mailboxes("alice@example.org")


def test_owns_ignores_accept_any_and_postmaster_fallback() -> None:
    r = resolver(LocalDomain(ORG, accept_any=True))
    assert not r.owns(a("alice@example.org"), a("someone@example.org"))
    assert not r.owns(a("alice@example.org"), a("postmaster@example.org"))


def test_role_names_reach_postmaster_or_the_configured_address() -> None:
    domain = LocalDomain(ORG, aliases={"postmaster": ("alice",)})
    r = resolver(domain)
    for name in ("root", "abuse", "MAILER-DAEMON", "postmaster"):
        assert r.resolve(a(f"{name}@example.org")) == mailboxes("alice@example.org"), name
    # Without a postmaster alias, root goes to postmaster's own mailbox (RFC 5321 §4.5.1).
    assert resolver().resolve(a("root@example.org")) == mailboxes("postmaster@example.org")
    configured = RecipientResolver(
        [LocalDomain(ORG)], Users("bob@example.org"), postmaster=a("bob@example.org")
    )
    assert configured.resolve(a("root@example.org")) == mailboxes("bob@example.org")
    assert configured.resolve(a("postmaster@example.org")) == mailboxes("bob@example.org")
    # An account of that name wins.
    assert resolver(users=Users("root@example.org")).resolve(a("root@example.org")) == (
        mailboxes("root@example.org")
    )


class VersionedUsers(Users):
    """A directory that tells when its answers may have changed (as boot/dbcache.py's)."""

    def __init__(self, *addresses: str) -> None:
        super().__init__(*addresses)
        self.token: object | None = 1

    def generation(self) -> object | None:
        return self.token


def test_answers_are_kept_while_the_users_generation_stays_the_same() -> None:
    users = VersionedUsers("alice@example.org")
    r = resolver(LocalDomain(ORG, aliases={"sales": ("alice", "bob")}), users=users)
    first = r.resolve(a("sales@example.org"))
    asked = len(users.asked)
    assert r.resolve(a("sales@example.org")) is first  # kept: the users were not asked again
    assert len(users.asked) == asked
    assert r.resolve(a("sales@example.org"), wildcards=False) == first  # its own entry
    assert len(users.asked) > asked

    users.accounts.add(a("bob@example.org"))  # a change, and the new generation that tells it
    users.token = 2
    assert r.resolve(a("sales@example.org")) == mailboxes("alice@example.org", "bob@example.org")
    users.accounts.clear()
    users.token = None  # cannot be told (a fresh stamp): asked every time, nothing kept
    assert r.resolve(a("sales@example.org")) == Unknown()
    users.accounts.add(a("alice@example.org"))
    assert r.resolve(a("alice@example.org")) == mailboxes("alice@example.org")
    users.accounts.clear()
    assert r.resolve(a("alice@example.org")) == Unknown()


def test_without_a_generation_every_answer_asks_the_users() -> None:
    users = Users("alice@example.org")
    r = resolver(users=users)
    r.resolve(a("alice@example.org"))
    r.resolve(a("alice@example.org"))
    assert users.asked == [a("alice@example.org")] * 2
