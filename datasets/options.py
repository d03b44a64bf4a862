"""Dataset-specific command-line flags (config.py adds them to its "data" group).

Defaults reproduce the authors' code except for the deviations listed in the README's deviation
table; each documented quirk has a named option that fixes or reproduces it (docs/datasets.md
lists them)."""


# (flag, choices, help): each switches a dataset between the reference's behaviour and this
# project's fix or variant; the first choice is the default
CHOICE_FLAGS = (
    ("-action_decode", ("reference", "full"),
     "action (DailyAction-DVS): 'reference' decodes like the authors (DAVIS "
     "address masks, x = 127 - x, only events with x, y < 128 kept, frames "
     "sized 346x260, a file's last record never decoded); 'full' detects the "
     "DVS128 or DAVIS address layout from the files and decodes every record "
     "over the whole sensor (default reference)"),
    ("-recognition_window", ("first", "last"),
     "recognition: where training windows start. 'first': RCS random start "
     "or the first event (this project's fix); 'last': the reference's bug, "
     "every window starts at the last event (default first)"),
    ("-gait_eventdrop", ("reference", "fixed", "off"),
     "gait_day / gait_night: EventDrop augmentation of training windows. "
     "'reference' keeps the authors' quirks: drop by area tests the wrong "
     "columns against a downsampled box joined with AND, and random drop "
     "shuffles the survivors, whose frames are then binned by bisecting the "
     "shuffled times; 'fixed' drops a real rectangle and keeps time order; "
     "'off' disables EventDrop (default reference)"),
    ("-interval_scaling_empty", ("zeros", "nan"),
     "with -interval_scaling, a window without events (maximum 0): 'zeros' "
     "keeps its frames zero; 'nan' divides 0 by 0 as the authors' code does, "
     "making the frames NaN, which stops training at the first such window "
     "(default zeros)"),
    ("-gesture_clip_times", ("signed", "uint32"),
     "gesture: arithmetic of the test clip placement. 'signed': as the "
     "authors' code computes it under NumPy 1.x, the NumPy of their runs; "
     "'uint32': as it computes it under NumPy >= 2, where the hdf5's uint32 "
     "times make negative differences wrap: a sample longer than clip*T*dt "
     "gets empty clips after the first, one shorter than T*dt only empty "
     "clips (default signed)"),
    ("-hardvs_test_list", ("test", "val"),
     "har_dvs: evaluate on test_label.txt or val_label.txt (default test)"),
)


def add_dataset_arguments(group):
    """Flags that only some datasets read. Each one needs help text and a default."""
    group.add_argument("-train_samples", type=int, default=0, metavar="N",
                       help="use only N training samples, a fixed random subset (the same on every "
                            "run; 0 = all; for quick runs, e.g. the demo)")
    group.add_argument("-test_samples", type=int, default=0, metavar="N",
                       help="use only N test samples, a fixed random subset (0 = all)")
    group.add_argument("-synthetic_train", type=int, default=600, metavar="N",
                       help="synthetic dataset: number of training recordings (default 600)")
    group.add_argument("-synthetic_test", type=int, default=200, metavar="N",
                       help="synthetic dataset: number of test recordings (default 200)")
    for flag, choices, text in CHOICE_FLAGS:
        group.add_argument(flag, default=choices[0], choices=choices, help=text)
    group.add_argument("-sensor_size", dest="sensor_size_flag", type=int, nargs=2, default=None,
                       metavar=("X", "Y"),
                       help="events (your own data): sensor width X and height Y in pixels; default: "
                            "DIR/info.json, else the largest x and y found in the data")
