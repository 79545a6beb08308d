# A streaming standby does no work; after promote it takes over.  The
# primary's Skribble URL points at a closed port, so its requests stay
# pending; the standby's points at the double, which must see no call while
# the standby is in recovery, and every request exactly once after promote.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $d = start_double();
my $primary = qes_node('primary', double => { url => 'http://127.0.0.1:1' }, relay => 0, streaming => 1,
	conf => { 'qes_sign.retry_max_delay' => "'1s'", 'qes_sign.http_connect_timeout' => "'1s'" });
$primary->backup('base');

my $standby = PostgreSQL::Test::Cluster->new('standby');
my $relay = start_relay($standby);
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->append_conf('postgresql.conf',
	"qes_sign.skribble_url = '$d->{url}/v2'\n"
	  . "qes_sign.callback_base_url = 'http://127.0.0.1:$relay->{port}/qes/callback'\n");
$standby->start;

my @ids = create_requests($primary, 20);
my $list = join(', ', map { "'$_'" } @ids);

scenario 'a standby does no work' => sub {
	ok(wait_until($primary, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qes_sign worker'", '1', 30),
		'the primary runs a qes_sign worker');
	$primary->wait_for_catchup($standby);
	is($standby->safe_psql('postgres', "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE id IN ($list)"),
		'20', 'the requests reached the standby');
	sleep 3;    # give a misbehaving standby worker time to act
	my $st = double_stats($d);
	is($st->{total_calls}, 0, 'the double saw no API call while the standby is in recovery');
	is($st->{logins},      0, 'and no login');
	is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'standby still in recovery');
	is($primary->safe_psql('postgres', "SELECT count(*) FROM qes_sign.work_items WHERE kind = 'submit' "
		  . "AND state = 'pending'"), '20', "the primary's submits stay pending (its Skribble URL is dead)");
};

scenario 'after promote the standby completes every request exactly once' => sub {
	$primary->stop('fast');
	$standby->promote;
	submitted_ok($standby, \@ids, 60, 'the promoted standby submitted all 20');
	is(sign_all($d, $standby, \@ids), 0, 'all signers signed');
	ok(wait_until($standby, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE id IN ($list) "
		  . "AND status = 'vollstaendig'", '20', 60), 'all 20 vollstaendig after promote');
	creates_once_ok($d, \@ids, 'each created exactly once after promote');
	is(double_stats($d)->{creates}, 20, 'the double holds 20 requests');
};

$standby->stop;
done_testing();
