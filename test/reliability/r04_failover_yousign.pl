# r04_failover.pl against Yousign (API v3): the same suite with QES_PROVIDER=yousign
# (its own logs, nodes and bucket under this script's name).
use strict;
use warnings;
use FindBin;
use PostgreSQL::Test::Utils ();     # at compile time: their INIT blocks name the logs after this script
use PostgreSQL::Test::Cluster ();
$ENV{QES_PROVIDER} = 'yousign';
my $suite = "$FindBin::RealBin/r04_failover.pl";
-r $suite or die "$suite: $!\n";
do $suite;
die $@ if $@;
