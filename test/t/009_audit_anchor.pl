# The audit chain anchored in the archive bucket (version 1.1): requests
# archived by the worker leave an anchor under _audit/<database>/ that
# boto3 and the extension read back; anchor_audit_chain() is for
# operators only; a superuser who disables the triggers, rewrites an
# anchored entry and recomputes every later hash (the chain is then
# consistent in itself) or cuts the trail short before its last anchor is
# caught by verify_audit_chain() through the anchors, which names the
# first entry affected, also after later anchors of the rewritten chain
# (which must not replace the genuine ones); and the chain head refuses
# every write but the chain's own, for superusers too.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP qw(decode_json);
use Math::BigInt;

my $d    = start_double();
my $s3   = start_s3();
my $node = qes_node('anchor', double => $d, s3 => $s3, conf => { 'qes_sign.retry_max_delay' => "'1s'" });
my $tmp  = PostgreSQL::Test::Utils::tempdir();
my $prefix = '_audit/postgres/';

sub one { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }
sub slurp_bin { my ($f) = @_; open my $fh, '<:raw', $f or die "$f: $!"; local $/; return <$fh>; }

# try(sql): (sqlstate or 'ok', stdout, stderr) of sql, run with verbose errors
sub try
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql", stdout => \$out, stderr => \$err);
	return ('ok', $out, $err) if $rc == 0;
	my ($state) = $err =~ /ERROR:\s+([0-9A-Z]{5}):/;
	return ($state // "rc $rc", $out, $err);
}

# verify(): the row of qes_sign.verify_audit_chain() as a hash (NULL as undef)
sub verify
{
	my @c = split /\|/, one(q{SELECT ok, entries, coalesce(first_broken::text, '<null>'),
		coalesce(problem, '<null>'), coalesce(anchored_seq::text, '<null>'), coalesce(anchor_check, '<null>')
		FROM qes_sign.verify_audit_chain()}), -1;
	my %v;
	@v{qw(ok entries first_broken problem anchored_seq anchor_check)} = map { $_ eq '<null>' ? undef : $_ } @c;
	return \%v;
}

# the hash chain checked here, independently of verify_audit_chain: the
# number of entries whose hash or link is wrong, plus 1 if the head is not
# the last entry
sub chain_inconsistencies
{
	return one(q{
		SELECT (SELECT count(*) FROM (
		          SELECT l.hash, l.prev_hash, lag(l.hash) OVER (ORDER BY l.seq) AS before,
		                 l.seq - lag(l.seq) OVER (ORDER BY l.seq) AS gap,
		                 qes_sign.audit_hash(l.prev_hash, l.seq, l.at, l.request_id, l.verwaltung,
		                                     l.event, l.actor, l.detail) AS recomputed
		            FROM qes_sign.audit_log l) x
		         WHERE x.hash <> x.recomputed
		            OR x.prev_hash <> coalesce(x.before, decode(repeat('00', 32), 'hex'))
		            OR coalesce(x.gap, 1) <> 1)
		     + (SELECT count(*) FROM qes_sign.audit_head h
		         WHERE NOT EXISTS (SELECT FROM qes_sign.audit_log l
		                            WHERE l.seq = h.seq AND l.hash = h.hash
		                              AND l.seq = (SELECT max(seq) FROM qes_sign.audit_log)))});
}

# the anchor objects in the bucket, read with boto3: {key => decoded JSON}
sub bucket_anchors
{
	my $l = s3_check($s3, 'list', $prefix);
	die 'check.py list: ' . JSON::PP::encode_json($l->{error}) . "\n" if $l->{error};
	my %a;
	for my $o (@{ $l->{objects} })
	{
		my $f = "$tmp/anchor.json";
		unlink $f;
		my $g = s3_check($s3, 'get', $o->{key}, '--out', $f);
		die "check.py get $o->{key}: " . JSON::PP::encode_json($g->{error}) . "\n" if $g->{error};
		$a{ $o->{key} } = decode_json(slurp_bin($f));
	}
	return \%a;
}

# key_ok(key, seq, hash hex, name): the key of an anchor of entry seq:
# _audit/<db>/<19 digits of 2^63 - 1 - seq>-<seq>.json (newest first in a
# listing), or with "-<first 16 hex digits of the hash>" before ".json"
sub key_ok
{
	my ($key, $seq, $hash, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $n = Math::BigInt->new('9223372036854775807')->bsub($seq)->bstr;
	$n = ('0' x (19 - length $n)) . $n;
	my $ok = ($key // '') =~ /^\Q$prefix$n-$seq\E(?:-([0-9a-f]{16}))?\.json$/
	  && (!defined $1 || $1 eq substr($hash, 0, 16));
	return ok($ok, $name) || diag("key $key; expected $prefix$n-$seq" . '[-<16 hex digits of the hash>].json');
}

my $trig_sql = q{SELECT string_agg(c.relname || '.' || t.tgname || '=' || t.tgenabled::text, ' ' ORDER BY c.relname, t.tgname)
	FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
	WHERE c.relname IN ('audit_log', 'audit_head') AND c.relnamespace = 'qes_sign'::regnamespace};
my $triggers = one($trig_sql);

my (@ids, $last_anchor);

scenario 'archived requests are anchored in the bucket' => sub {
	like($triggers, qr/audit_head\.head_guard=A/, 'audit_head has its guard, ENABLE ALWAYS');
	unlike($triggers, qr/=[^A]/, "every trigger of audit_log and audit_head is ENABLE ALWAYS ($triggers)");
	is_deeply(s3_check($s3, 'list', $prefix)->{objects}, [], 'no anchor in the bucket before anything was archived');

	@ids = complete_requests($d, $node, 3);
	all_status_ok($node, \@ids, 'archiviert', 60, 'three requests archiviert by the worker')
	  or die "not archived\n";
	my $archived_seq = one("SELECT max(seq) FROM qes_sign.audit_log WHERE event = 'status_archiviert' AND request_id IN ("
		  . in_list(@ids) . ')');
	ok(wait_until($node, "SELECT coalesce(max(seq), 0) >= $archived_seq FROM qes_sign.audit_anchors", 't', 30),
		"the worker anchored the chain after the last archived request (entry $archived_seq)");
	ok(wait_until($node, "SELECT count(*) FROM qes_sign.work_items WHERE state = 'pending'", '0', 30),
		'no work left for the worker');

	my @rows = query_list($node, "SELECT seq, encode(hash, 'hex'), bucket, key FROM qes_sign.audit_anchors ORDER BY seq");
	ok(scalar(@rows) >= 1, scalar(@rows) . ' anchor(s) recorded in qes_sign.audit_anchors');
	my $bucket = bucket_anchors();
	is_deeply([ sort keys %$bucket ], [ sort map { $_->[3] } @rows ],
		'the bucket holds exactly the anchors qes_sign.audit_anchors records');
	my %log = map { $_->[0] => $_->[1] } query_list($node, "SELECT seq, encode(hash, 'hex') FROM qes_sign.audit_log");
	my $prev;
	for my $r (@rows)
	{
		my ($seq, $hash, $b, $key) = @$r;
		is($b, $s3->{bucket}, "anchor $seq: bucket $s3->{bucket}");
		key_ok($key, $seq, $log{$seq}, "anchor $seq: key $key (19 digits of 2^63 - 1 - seq, newest first)");
		my $a = $bucket->{$key} // {};
		is($a->{format}, 'qes_sign-audit-anchor-v1', "anchor $seq: format");
		is($a->{database}, 'postgres', "anchor $seq: database");
		is($a->{seq}, $seq, "anchor $seq: seq in the object");
		is($a->{hash}, $log{$seq}, "anchor $seq: the hash in the bucket is the hash of entry $seq in audit_log");
		is($hash, $log{$seq}, "anchor $seq: audit_anchors.hash = audit_log.hash");
		is_deeply($a->{previous}, $prev ? { seq => $prev->[0] + 0, hash => $prev->[1] } : undef,
			"anchor $seq: previous names the anchor before it");
		my $from = $prev ? $prev->[0] + 1 : 1;
		is_deeply($a->{entries}, [ map { [ $_, $log{$_} ] } $from .. $seq ],
			"anchor $seq: the hashes of entries $from..$seq");
		$prev = $r;
	}
	$last_anchor = $rows[-1][0];
	my ($st, $out) = try("SELECT (qes_sign._s3_request('GET', '$s3->{bucket}', '$rows[-1][3]')).status");
	is("$st $out", 'ok 200', 'the extension reads the newest anchor back from the bucket (GET 200)');

	my $v = verify();
	is($v->{ok}, 't', 'verify_audit_chain(): ok') or diag(explain $v);
	is($v->{anchored_seq}, $last_anchor, "anchored_seq = the newest anchor ($last_anchor)");
	like($v->{anchor_check} // '', qr/checked against \d+ anchor/, "anchor_check: $v->{anchor_check}");
	is($v->{first_broken}, undef, 'first_broken NULL');
};

my ($app_ok, $admin_key);
scenario 'anchor_audit_chain(): operators only' => sub {
	one(q{CREATE ROLE r09_app LOGIN IN ROLE qes_sign_app;
		  CREATE ROLE r09_admin LOGIN IN ROLE qes_sign_admin;
		  SELECT qes_sign.grant_tenant('r09_app', 'hv-test')});
	my $anchors = one('SELECT count(*) FROM qes_sign.audit_anchors');
	my $objects = scalar @{ s3_check($s3, 'list', $prefix)->{objects} };
	my ($st, $out, $err) = try("SET ROLE r09_app; SET qes_sign.verwaltung = 'hv-test'; SELECT qes_sign.anchor_audit_chain()");
	is($st, '42501', 'a member of qes_sign_app (with its tenant set) is refused: 42501');
	like($err, qr/permission denied|only qes_sign_admin/, "refused: $err");
	($st) = try("SET ROLE r09_app; SET qes_sign.verwaltung = 'hv-test'; SELECT * FROM qes_sign.verify_audit_chain()");
	is($st, '42501', 'verify_audit_chain() is refused to the app as well: 42501');
	is(one('SELECT count(*) FROM qes_sign.audit_anchors'), $anchors, 'the refused call recorded no anchor');
	is(scalar @{ s3_check($s3, 'list', $prefix)->{objects} }, $objects, 'and wrote nothing to the bucket');

	# qes_sign_admin may (the grant above is a new entry to anchor)
	($st, $out, $err) = try('SET ROLE r09_admin; SELECT qes_sign.anchor_audit_chain()');
	is($st, 'ok', 'a member of qes_sign_admin anchors') or diag($err);
	my $head = one('SELECT max(seq) FROM qes_sign.audit_log');
	key_ok($out, $head, one("SELECT encode(hash, 'hex') FROM qes_sign.audit_log WHERE seq = $head"),
		"it returns the key of the head's anchor ($out)");

	# the superuser: after one more entry (a download), a new anchor
	one("SELECT length(qes_sign.download('$ids[0]'))");
	$head = one('SELECT max(seq) FROM qes_sign.audit_log');
	cmp_ok($head, '>', $last_anchor, "new entries since the worker's anchor (head $head)");
	$admin_key = one('SELECT qes_sign.anchor_audit_chain()');
	like($admin_key, qr{^_audit/postgres/\d{19}-\d+(-[0-9a-f]{16})?\.json$}, "the superuser anchors: $admin_key");
	key_ok($admin_key, $head, one("SELECT encode(hash, 'hex') FROM qes_sign.audit_log WHERE seq = $head"),
		'the key names the head');
	is(one("SELECT seq || ' ' || key FROM qes_sign.audit_anchors ORDER BY seq DESC LIMIT 1"), "$head $admin_key",
		'recorded in qes_sign.audit_anchors');
	my $g = s3_check($s3, 'get', $admin_key, '--out', "$tmp/admin.json");
	ok(!$g->{error}, 'boto3 reads it from the bucket') or diag(explain $g);
	my $a = eval { decode_json(slurp_bin("$tmp/admin.json")) } // {};
	is($a->{seq}, $head, 'the object names the head');
	is($a->{hash}, one("SELECT encode(hash, 'hex') FROM qes_sign.audit_log WHERE seq = $head"), "with the head's hash");
	is($a->{entries}[-1][0], $head, 'its entries end with the head');
	is($a->{entries}[0][0], $a->{previous}{seq} + 1, 'and start after the previous anchor');
	is(verify()->{anchored_seq}, $head, 'verify_audit_chain(): anchored_seq = the new anchor');
	$last_anchor = $head;
	$app_ok = 1;
};

# the attack: every trigger of the trail and its head disabled, in one
# transaction with the edit, so that no other session sees the trail unguarded
my $unguard = q{
	ALTER TABLE qes_sign.audit_log DISABLE TRIGGER ALL;
	ALTER TABLE qes_sign.audit_head DISABLE TRIGGER ALL;};
my $reguard = q{
	ALTER TABLE qes_sign.audit_log ENABLE ALWAYS TRIGGER audit_chain, ENABLE ALWAYS TRIGGER audit_append_only,
	    ENABLE ALWAYS TRIGGER audit_no_truncate;
	ALTER TABLE qes_sign.audit_head ENABLE ALWAYS TRIGGER head_no_truncate, ENABLE ALWAYS TRIGGER head_guard;};

# the attacker's recomputation: entries from..head chained anew, the head set
sub recompute_sql
{
	my ($from) = @_;
	return qq{
	DO \$\$
	DECLARE r record; prev bytea; h bytea;
	BEGIN
	    SELECT l.hash INTO prev FROM qes_sign.audit_log l WHERE l.seq = $from - 1;
	    FOR r IN SELECT * FROM qes_sign.audit_log l WHERE l.seq >= $from ORDER BY l.seq LOOP
	        h := qes_sign.audit_hash(prev, r.seq, r.at, r.request_id, r.verwaltung, r.event, r.actor, r.detail);
	        UPDATE qes_sign.audit_log l SET prev_hash = prev, hash = h WHERE l.seq = r.seq;
	        prev := h;
	    END LOOP;
	    UPDATE qes_sign.audit_head SET seq = (SELECT max(seq) FROM qes_sign.audit_log), hash = prev;
	END \$\$;};
}

# restore(): the trail and its head as saved before the attack
sub restore
{
	one(qq{BEGIN; $unguard
		DELETE FROM qes_sign.audit_log;
		INSERT INTO qes_sign.audit_log SELECT * FROM public.audit_saved;
		UPDATE qes_sign.audit_head h SET seq = s.seq, hash = s.hash FROM public.head_saved s;
		$reguard COMMIT;});
	return;
}

scenario 'a rewritten history, all hashes recomputed: found through the anchors' => sub {
	die "no anchors\n" unless $app_ok;
	ok(wait_until($node, "SELECT count(*) FROM qes_sign.work_items WHERE state = 'pending'", '0', 30), 'the worker is idle');
	one('CREATE TABLE public.audit_saved AS SELECT * FROM qes_sign.audit_log;
		 CREATE TABLE public.head_saved AS SELECT * FROM qes_sign.audit_head');
	my $x = $last_anchor - 3;
	my ($event, $detail) = split /\|/, one("SELECT event, detail FROM qes_sign.audit_log WHERE seq = $x");
	note("rewriting entry $x ($event $detail)");

	# the triggers are ENABLE ALWAYS: a replica session does not get past them
	my ($st) = try("SET session_replication_role = replica; UPDATE qes_sign.audit_log SET detail = '{}' WHERE seq = $x");
	is($st, '42501', 'with session_replication_role = replica the UPDATE is still refused (ENABLE ALWAYS)');
	($st) = try("BEGIN; ALTER TABLE qes_sign.audit_log DISABLE TRIGGER USER; ALTER TABLE qes_sign.audit_head DISABLE TRIGGER USER; "
		  . "UPDATE qes_sign.audit_log SET detail = '{}' WHERE seq = $x; UPDATE qes_sign.audit_head SET seq = seq; ROLLBACK;");
	is($st, 'ok', 'a superuser who disables the triggers can write the trail and its head');

	my $before = one("SELECT encode(hash, 'hex') FROM qes_sign.audit_log WHERE seq = $x");
	rewrite($x, 'a rewritten history');
	is(one($trig_sql), $triggers, 'the triggers are back as they were (ENABLE ALWAYS)');
	isnt(one("SELECT encode(hash, 'hex') FROM qes_sign.audit_log WHERE seq = $x"), $before, "entry $x has a new hash");
	is(one("SELECT detail ->> 'forged' FROM qes_sign.audit_log WHERE seq = $x"), 'a rewritten history', "entry $x is rewritten");
	is(chain_inconsistencies(), '0', 'the rewritten chain is consistent in itself (hashes, links, head)');

	# the chain check alone is fooled: with the bucket unreachable, verify says ok
	stop_s3($s3);
	my $v = verify();
	restart_s3($s3);
	is($v->{ok}, 't', 'without the bucket, verify_audit_chain() is fooled: ok');
	is($v->{problem}, undef, 'the internal check finds no problem');
	like($v->{anchor_check} // '', qr/^not checked/, "anchor_check says the anchors were not checked: $v->{anchor_check}");

	$v = verify();
	is($v->{ok}, 'f', 'with the anchors: ok = false');
	is($v->{first_broken}, $x, "first_broken = the rewritten entry ($x)");
	like($v->{problem} // '', qr/anchor/, "the problem names the anchor: $v->{problem}");
	like($v->{problem} // '', qr/\b$x\b/, 'and the entry');
	is($v->{anchored_seq}, $last_anchor, 'anchored_seq = the newest anchor');

	restore();
	is(chain_inconsistencies(), '0', 'restored');
	$v = verify();
	is($v->{ok}, 't', 'with the original entries back, verify_audit_chain() is ok again') or diag(explain $v);
};

scenario 'a trail cut short before its last anchor: found through the anchors' => sub {
	die "no anchors\n" unless $app_ok;
	my $cut = $last_anchor - 2;    # entries cut..last_anchor go
	my $head = one('SELECT max(seq) FROM qes_sign.audit_log');
	is($head, $last_anchor, "the trail ends with the anchored entry $last_anchor");
	one(qq{BEGIN; $unguard
		DELETE FROM qes_sign.audit_log WHERE seq >= $cut;
		UPDATE qes_sign.audit_head SET seq = l.seq, hash = l.hash
		  FROM (SELECT seq, hash FROM qes_sign.audit_log ORDER BY seq DESC LIMIT 1) l;
		$reguard COMMIT;});
	is(one($trig_sql), $triggers, 'the triggers are back as they were (ENABLE ALWAYS)');
	is(one('SELECT max(seq) FROM qes_sign.audit_log'), $cut - 1, "the trail ends at entry " . ($cut - 1));
	is(chain_inconsistencies(), '0', 'the shortened chain is consistent in itself (head = last entry)');

	stop_s3($s3);
	my $v = verify();
	restart_s3($s3);
	is($v->{ok}, 't', 'without the bucket, verify_audit_chain() is fooled: ok');
	is($v->{first_broken}, undef, 'first_broken NULL');

	$v = verify();
	is($v->{ok}, 'f', 'with the anchors: ok = false');
	is($v->{first_broken}, $cut, "first_broken = the first entry cut ($cut)");
	like($v->{problem} // '', qr/missing/, "the problem: $v->{problem}");
	like($v->{problem} // '', qr/anchor/, 'names the anchor');

	restore();
	$v = verify();
	is($v->{ok}, 't', 'restored: ok again') or diag(explain $v);
	is($v->{entries}, $head, "all $head entries back");
};

scenario 'the chain head refuses writes from anyone but the chain' => sub {
	my $head = one("SELECT seq || ' ' || encode(hash, 'hex') FROM qes_sign.audit_head");
	my ($st, $out, $err) = try('UPDATE qes_sign.audit_head SET seq = seq');
	is($st, '42501', 'UPDATE audit_head SET seq = seq as superuser: 42501');
	like($err, qr/moves only with the chain/, "refused: $err");
	($st) = try("UPDATE qes_sign.audit_head SET hash = decode(repeat('00', 32), 'hex')");
	is($st, '42501', 'UPDATE of the hash: 42501');
	($st) = try('SET session_replication_role = replica; UPDATE qes_sign.audit_head SET seq = seq + 1');
	is($st, '42501', 'with session_replication_role = replica: 42501 (ENABLE ALWAYS)');
	($st) = try("INSERT INTO qes_sign.audit_head VALUES (true, 1, decode(repeat('00', 32), 'hex')) ON CONFLICT DO NOTHING");
	is($st, '42501', 'INSERT ... ON CONFLICT DO NOTHING: 42501');
	($st) = try("INSERT INTO qes_sign.audit_head VALUES (true, 1, decode(repeat('00', 32), 'hex')) "
		  . 'ON CONFLICT (singleton) DO UPDATE SET seq = 1');
	is($st, '42501', 'INSERT ... ON CONFLICT DO UPDATE: 42501');
	($st) = try('DELETE FROM qes_sign.audit_head');
	isnt($st, 'ok', "DELETE refused ($st)");
	is(one("SELECT seq || ' ' || encode(hash, 'hex') FROM qes_sign.audit_head"), $head, 'the head is unchanged');

	# the chain itself still moves it
	one("SELECT qes_sign.grant_tenant('r09_app', 'hv-other')");
	my ($seq) = split / /, $head;
	is(one('SELECT seq FROM qes_sign.audit_head'), $seq + 1, 'a new entry moves the head');
	my $v = verify();
	is($v->{ok}, 't', 'verify_audit_chain(): ok') or diag(explain $v);
	is($v->{anchored_seq}, $last_anchor, 'the newest anchor still matches');
};

# rewrite(x): entry x rewritten and every later hash recomputed, the head set
sub rewrite
{
	my ($x, $mark) = @_;
	one(qq{BEGIN; $unguard
		UPDATE qes_sign.audit_log SET detail = detail || '{"forged": "$mark"}' WHERE seq = $x;
		} . recompute_sql($x) . qq{ $reguard COMMIT;});
	return;
}

# anchor_hash(key): the hash the anchor object under key holds (boto3)
sub anchor_hash
{
	my ($key) = @_;
	my $f = "$tmp/one_anchor.json";
	unlink $f;
	my $g = s3_check($s3, 'get', $key, '--out', $f);
	return $g->{error} ? 'missing' : (eval { decode_json(slurp_bin($f))->{hash} } // 'unreadable');
}

# An anchor written after a rewrite (by the worker after the next archived
# request or within qes_sign.audit_anchor_interval of any new entry, or by
# anchor_audit_chain()) covers the rewritten chain: the older, genuine
# anchors must still show the rewrite, and an anchor of the rewritten
# chain must not replace the genuine anchor of the same entry.
scenario 'a rewritten history that later anchors cover' => sub {
	die "no anchors\n" unless $app_ok;
	ok(wait_until($node, "SELECT count(*) FROM qes_sign.work_items WHERE state = 'pending'", '0', 30), 'the worker is idle');
	my $head = one('SELECT max(seq) FROM qes_sign.audit_log');
	is($head, $last_anchor + 1, "one entry (head $head) since the newest anchor ($last_anchor)");
	my $genuine = one("SELECT encode(hash, 'hex') FROM qes_sign.audit_log WHERE seq = $head");
	my $gkey = one('SELECT qes_sign.anchor_audit_chain()');
	key_ok($gkey, $head, $genuine, "the genuine head (entry $head) anchored: $gkey");
	my $x = $last_anchor - 3;

	# 1. rewritten, then the same head anchored again (no new entry)
	rewrite($x, 'anchored over the genuine anchor');
	is(verify()->{first_broken}, $x, "the rewrite of entry $x is found");
	my $fkey = one('SELECT qes_sign.anchor_audit_chain()');
	my $forged = one("SELECT encode(hash, 'hex') FROM qes_sign.audit_log WHERE seq = $head");
	isnt($forged, $genuine, "entry $head has another hash in the rewritten chain");
	is(anchor_hash($fkey), $forged, "the anchor of the rewritten head holds its hash ($fkey)");
	is(anchor_hash($gkey), $genuine, "the genuine anchor of entry $head is still in the bucket, unchanged");
	my $v = verify();
	is($v->{ok}, 'f', 'the rewrite is still found: ok = false') or diag(explain $v);
	is($v->{first_broken}, $x, "first_broken = $x");

	# 2. a new entry on the rewritten chain, anchored (what the worker does)
	one("SELECT qes_sign.grant_tenant('r09_app', 'hv-later')");
	my $next = one('SELECT qes_sign.anchor_audit_chain()');
	key_ok($next, $head + 1, one("SELECT encode(hash, 'hex') FROM qes_sign.audit_log WHERE seq = $head + 1"),
		"the next entry anchored: $next");
	$v = verify();
	is($v->{ok}, 'f', 'after a later anchor the older anchors still show the rewrite: ok = false')
	  or diag(JSON::PP->new->canonical->encode($v));
	is($v->{first_broken}, $x, "first_broken = $x");
	like($v->{problem} // '', qr/\b$x\b.*anchor/, "the problem: $v->{problem}");
	is($v->{anchored_seq}, $head + 1, 'anchored_seq = the newest anchor');
};

$node->stop;
done_testing();
